#ifndef MATFORMER_CORE_MODEL_SENTENCEPIECE_MODULE_H_
#define MATFORMER_CORE_MODEL_SENTENCEPIECE_MODULE_H_

#include <string>
#include <vector>

// The interface between sentencepiece_adapter.cc and the matformer_sentencepiece
// module (sentencepiece_module.cc), the only code linked against SentencePiece.
//
// Why a module: Debian's libsentencepiece.so.0 exports its own bundled copy of
// protobuf-lite 3.14 (and bits of Abseil). Linked into a process that also
// loads libprotobuf.so.32 (the gRPC server), the two copies interpose each
// other's symbols and the process aborts at start-up. The adapter dlopens the
// module with RTLD_LOCAL | RTLD_DEEPBIND, so SentencePiece binds to its own
// copies and never enters the global symbol scope. Calls go through virtual
// functions, so no symbol crosses the boundary but the one factory.
namespace matformer::spm {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int piece_count() const = 0;
  virtual bool Encode(const std::string& text, std::vector<int>* ids, std::string* error) const = 0;
  virtual bool Decode(const std::vector<int>& ids, std::string* text, std::string* error) const = 0;
};

// The module's factory: a new Backend, or nullptr with *error set.
using LoadBackendFunction = Backend* (*)(const std::string& path, std::string* error);
inline constexpr char kLoadBackendSymbol[] = "matformer_spm_load_backend";

}  // namespace matformer::spm

#endif  // MATFORMER_CORE_MODEL_SENTENCEPIECE_MODULE_H_
