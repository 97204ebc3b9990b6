#include "core/model/sentencepiece_adapter.h"

#include <dlfcn.h>

#include <memory>
#include <string>

#include "core/model/sentencepiece_module.h"

namespace matformer::spm {
namespace {

// RTLD_DEEPBIND keeps SentencePiece on its own protobuf copy. The sanitizer
// runtimes refuse it, so sanitizer builds bind it like any library: fine for
// the engine and its tests, but a sanitizer build of the gRPC server (which
// also loads libprotobuf) cannot load a tokenizer.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL;
#else
constexpr int kDlopenFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#endif

struct Module {
  LoadBackendFunction load = nullptr;
  std::string error;
};

// Loaded once per process and never unloaded.
const Module& GetModule() {
  static const Module* const module = [] {
    auto* loaded = new Module;
    void* handle = dlopen(MATFORMER_SENTENCEPIECE_MODULE, kDlopenFlags);
    if (handle == nullptr) {
      loaded->error = std::string("cannot load the SentencePiece module: ") + dlerror();
      return loaded;
    }
    loaded->load = reinterpret_cast<LoadBackendFunction>(dlsym(handle, kLoadBackendSymbol));
    if (loaded->load == nullptr) loaded->error = std::string(MATFORMER_SENTENCEPIECE_MODULE) + ": " + dlerror();
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
