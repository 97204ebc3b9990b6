#ifndef MATFORMER_TESTS_UNIT_TEST_SYNC_H_
#define MATFORMER_TESTS_UNIT_TEST_SYNC_H_

#include <condition_variable>
#include <mutex>

namespace matformer::testing {

// absl::Notification's interface on std::mutex, for the tests that run under
// ThreadSanitizer: Debian's Abseil is not instrumented, so TSan cannot see the
// synchronization inside absl::Notification and would report the data it
// publishes as a race.
class Notification {
 public:
  void Notify() {
    std::lock_guard<std::mutex> lock(mutex_);
    notified_ = true;
    notified_changed_.notify_all();
  }
  bool HasBeenNotified() {
    std::lock_guard<std::mutex> lock(mutex_);
    return notified_;
  }
  void WaitForNotification() {
    std::unique_lock<std::mutex> lock(mutex_);
    notified_changed_.wait(lock, [this] { return notified_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable notified_changed_;
  bool notified_ = false;
};

}  // namespace matformer::testing

#endif  // MATFORMER_TESTS_UNIT_TEST_SYNC_H_
