#ifndef MATFORMER_CORE_GEMMA3N_CHAT_H_
#define MATFORMER_CORE_GEMMA3N_CHAT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace matformer::gemma3n {

struct ChatMessage {
  std::string role;  // "system" (first message only), "user", "assistant" (or "model")
  std::string content;
};

// The text of Gemma 3n's chat template (chat_template.jinja of the published
// checkpoints) for text messages, without the leading <bos> (the caller adds
// the bos id): a system message becomes a prefix of the first user turn
// (content + "\n\n"); each turn is "<start_of_turn>{user|model}\n{content}
// <end_of_turn>\n"; add_generation_prompt appends "<start_of_turn>model\n".
// Content goes in as is (the Gemma 3n template does not trim, unlike Gemma
// 3's; read from the template text as mirrored by model hubs). Roles must
// alternate user/assistant starting with user, as the template enforces. The
// turn markers are single pieces of the Gemma tokenizer.
absl::StatusOr<std::string> FormatChat(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

}  // namespace matformer::gemma3n

#endif  // MATFORMER_CORE_GEMMA3N_CHAT_H_
