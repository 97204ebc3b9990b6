// Gemma 3n's chat template (text messages).
#include "core/gemma3n/chat.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace matformer::gemma3n {
namespace {

TEST(Gemma3nChat, FormatsTurnsWithSystemPrefixAndGenerationPrompt) {
  auto text = FormatChat({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Why?"}},
                         /*add_generation_prompt=*/true);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nWhy?<end_of_turn>\n"
            "<start_of_turn>model\n");
  auto plain = FormatChat({{"user", "Hi"}}, /*add_generation_prompt=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(*plain, "<start_of_turn>user\nHi<end_of_turn>\n");
}

TEST(Gemma3nChat, RejectsBadRoles) {
  auto twice = FormatChat({{"user", "a"}, {"user", "b"}}, true);
  ASSERT_FALSE(twice.ok());
  EXPECT_TRUE(absl::StrContains(twice.status().message(), "alternate")) << twice.status();
  EXPECT_FALSE(FormatChat({{"assistant", "a"}}, true).ok());
  EXPECT_FALSE(FormatChat({{"user", "a"}, {"system", "b"}}, true).ok());
  EXPECT_FALSE(FormatChat({{"tool", "a"}}, true).ok());
}

}  // namespace
}  // namespace matformer::gemma3n
