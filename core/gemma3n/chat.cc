#include "core/gemma3n/chat.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace matformer::gemma3n {

absl::StatusOr<std::string> FormatChat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string first_user_prefix;
  size_t first = 0;
  if (!messages.empty() && messages[0].role == "system") {
    first_user_prefix = absl::StrCat(messages[0].content, "\n\n");
    first = 1;
  }
  std::string text;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    const bool user_turn = (i - first) % 2 == 0;
    const bool is_user = message.role == "user";
    const bool is_model = message.role == "assistant" || message.role == "model";
    if (!is_user && !is_model) {
      return absl::InvalidArgumentError(absl::StrCat("chat message ", i, ": role '", message.role,
                                                     "' (user, assistant, or system first)"));
    }
    if (is_user != user_turn) {
      return absl::InvalidArgumentError(
          absl::StrCat("chat message ", i, ": roles must alternate user/assistant/user/assistant/..."));
    }
    absl::StrAppend(&text, "<start_of_turn>", is_user ? "user" : "model", "\n",
                    i == first ? first_user_prefix : "", message.content, "<end_of_turn>\n");
  }
  if (add_generation_prompt) absl::StrAppend(&text, "<start_of_turn>model\n");
  return text;
}

}  // namespace matformer::gemma3n
