#include "core/model/sentencepiece_adapter.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/model/sentencepiece_module.h"

namespace matformer::spm {
namespace {

// RTLD_DEEPBIND keeps SentencePiece on its own protobuf copy. The ASan and
// TSan runtimes refuse it, so those builds bind it like any library: fine for
// the engine and its tests, but such a build of the gRPC server (which also
// loads libprotobuf) cannot load a tokenizer. GCC defines __SANITIZE_*__;
// clang (the fuzz build) only answers __has_feature. UBSan alone accepts it.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MATFORMER_NO_DEEPBIND 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(MATFORMER_NO_DEEPBIND)
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL;
#else
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif

struct Module {
  LoadBackendFunction load = nullptr;
  std::string error;
};

constexpr char kModuleFileName[] = "libmatformer_sentencepiece.so";

// Where the module may be, first match wins: $MATFORMER_SENTENCEPIECE_MODULE,
// then <prefix>/lib next to an installed <prefix>/bin executable (the image
// layout of `cmake --install`), then the build tree the binary was built in.
std::vector<std::string> ModuleCandidates() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MATFORMER_SENTENCEPIECE_MODULE"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  std::error_code error;
  const std::filesystem::path executable = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) candidates.push_back((executable.parent_path().parent_path() / "lib" / kModuleFileName).string());
  candidates.push_back(MATFORMER_SENTENCEPIECE_MODULE);
  return candidates;
}

// Loaded once per process and never unloaded.
const Module& GetModule() {
  static const Module* const module = [] {
    auto* loaded = new Module;
    std::string tried;
    for (const std::string& path : ModuleCandidates()) {
      std::error_code error;
      if (!std::filesystem::exists(path, error)) {
        tried += " " + path + " (missing)";
        continue;
      }
      void* handle = dlopen(path.c_str(), kDlopenFlags);
      if (handle == nullptr) {
        loaded->error = std::string("cannot load the SentencePiece module: ") + dlerror();
        return loaded;
      }
      loaded->load = reinterpret_cast<LoadBackendFunction>(dlsym(handle, kLoadBackendSymbol));
      if (loaded->load == nullptr) loaded->error = path + ": " + dlerror();
      return loaded;
    }
    loaded->error = "cannot find the SentencePiece module; tried" + tried +
                    "; set MATFORMER_SENTENCEPIECE_MODULE to its path";
    return loaded;
  }();
  return *module;
}

}  // namespace

struct Processor::Impl {
  std::unique_ptr<Backend> backend;
};

Processor::Processor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Processor::~Processor() = default;

std::unique_ptr<Processor> Processor::Load(const std::string& path, std::string* error) {
  const Module& module = GetModule();
  if (module.load == nullptr) {
    *error = module.error;
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->backend.reset(module.load(path, error));
  if (impl->backend == nullptr) return nullptr;
  return std::unique_ptr<Processor>(new Processor(std::move(impl)));
}

int Processor::piece_count() const { return impl_->backend->piece_count(); }

bool Processor::Encode(const std::string& text, std::vector<int>* ids, std::string* error) const {
  return impl_->backend->Encode(text, ids, error);
}

bool Processor::Decode(const std::vector<int>& ids, std::string* text, std::string* error) const {
  return impl_->backend->Decode(ids, text, error);
}

}  // namespace matformer::spm
