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
// TSan runtimes' dlopen interceptor refuses it (google/sanitizers#611): a
// deep-bound library would find libc's malloc before the runtime's.
// - GCC's sanitizer builds link the shared runtime into the module too, first
//   among its dependencies (CMake defines MATFORMER_SANITIZER_IN_MODULE), so
//   deep binding finds the runtime's malloc first and the objection does not
//   apply: they call glibc's own dlopen, past the interceptor. This is what
//   lets the gRPC server (which also loads libprotobuf) run under ASan.
// - Clang's (the fuzz builds) keep the runtime in the executable: there the
//   module is bound like any library, which works in processes without
//   libprotobuf. GCC defines __SANITIZE_*__; clang only answers __has_feature.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MATFORMER_SANITIZER_BUILD 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MATFORMER_SANITIZER_BUILD 1
#endif

void* OpenModule(const char* path) {
#if defined(MATFORMER_SANITIZER_IN_MODULE)
  using DlopenFunction = void* (*)(const char*, int);
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  auto libc_dlopen = libc == nullptr ? nullptr : reinterpret_cast<DlopenFunction>(dlsym(libc, "dlopen"));
  if (libc_dlopen == nullptr) return nullptr;
  return libc_dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#elif defined(MATFORMER_SANITIZER_BUILD)
  return dlopen(path, RTLD_NOW | RTLD_LOCAL);
#else
  return dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
}

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
      void* handle = OpenModule(path.c_str());
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
