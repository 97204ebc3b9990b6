#ifndef MATFORMER_TESTS_INTEGRATION_TEST_SERVER_H_
#define MATFORMER_TESTS_INTEGRATION_TEST_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

// Helpers of the integration tests: real processes (matformer-server, the
// model tool, the Python client) started, bounded in time, and always killed.
namespace matformer::integration {

struct CommandResult {
  int exit_code = -1;  // -1: killed (timeout or signal)
  std::string output;  // stdout and stderr
};
// Runs `argv` to completion, killing it after `timeout`.
CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout);

// A fresh directory under the test's temporary directory.
std::string MakeTempDir(const std::string& name);

// Writes a small random model (4 layers, vocab 128 with the gemma3n-tiny
// tokenizer, f32, 2048 positions) with build/tools/matformer-make-random-model.
absl::Status MakeRandomModel(const std::string& directory);

// A running matformer-server on 127.0.0.1 with ports picked by the OS.
class ServerProcess {
 public:
  // Starts the server with `flags` (plus --host, --port=0, --metrics_port=0)
  // and waits until it logs both ports.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::vector<std::string>& flags,
                                                              absl::Duration timeout = absl::Seconds(300));
  ~ServerProcess();  // kills the server if it is still running
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  std::string target() const;
  int metrics_port() const { return metrics_port_; }
  void Signal(int signal_number) const;
  // The exit code once the process has exited, or DeadlineExceeded.
  absl::StatusOr<int> WaitForExit(absl::Duration timeout);
  // Everything the server has logged so far.
  std::string Log() const;

 private:
  ServerProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  bool exited_ = false;
  std::string log_path_;
  int port_ = 0;
  int metrics_port_ = 0;
};

// GET http://127.0.0.1:<port>/metrics.
absl::StatusOr<std::string> ScrapeMetrics(int port);
// The value of the sample named exactly `series` (name{labels} as exposed), if present.
std::optional<double> MetricValue(const std::string& metrics, const std::string& series);

}  // namespace matformer::integration

#endif  // MATFORMER_TESTS_INTEGRATION_TEST_SERVER_H_
