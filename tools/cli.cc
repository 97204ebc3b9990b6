// matformer-cli: a command-line client of matformer-server.
//   matformer-cli generate --prompt "In the beginning" [--stream] [--budget=250ms] [--tier=interactive]
//   matformer-cli score --prompt "In the beginning" --continuation " God created"
//   matformer-cli info | health | tokenize --prompt "text" | tokenize --prompt_ids=2,45,7
// --json prints responses in the proto3 JSON mapping (one object per line).
// TLS: --tls_ca=ca.pem (+ --tls_cert/--tls_key for mutual TLS); auth: --token_file=FILE or --token=T.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "matformer/v1/matformer.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port");
ABSL_FLAG(std::string, prompt, "", "Prompt text (generate, score, tokenize)");
ABSL_FLAG(std::vector<std::string>, prompt_ids, {},
          "Prompt as comma-separated token ids, instead of --prompt (tokenize: ids to decode)");
ABSL_FLAG(std::string, continuation, "", "score: the continuation text to score");
ABSL_FLAG(std::vector<std::string>, continuation_ids, {}, "score: the continuation as comma-separated token ids");
ABSL_FLAG(bool, chat, false,
          "generate: send --prompt as one user message of a chat (the model's chat template; Gemma 3n)");
ABSL_FLAG(bool, stream, false, "generate: print tokens as they are generated (GenerateStream)");
ABSL_FLAG(std::optional<absl::Duration>, budget, std::nullopt, "Latency budget, e.g. 250ms; unset: tier/deadline");
ABSL_FLAG(std::string, tier, "", "Service tier, e.g. interactive, standard, batch");
ABSL_FLAG(std::string, spec, "", "Pin a submodel: XL, S-S-M-M-L-XL, S-skip-M-M-L-L, ...; empty: the planner chooses");
ABSL_FLAG(std::optional<double>, max_expected_loss, std::nullopt, "Quality floor: highest held-out loss accepted");
ABSL_FLAG(std::optional<int>, max_new_tokens, std::nullopt, "Tokens to generate; unset: the server's default");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = no limit");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop sequences, comma-separated");
ABSL_FLAG(std::optional<absl::Duration>, deadline, std::nullopt, "gRPC deadline of the call, e.g. 2s");
ABSL_FLAG(bool, json, false, "Print responses as JSON (proto3 JSON mapping)");
ABSL_FLAG(std::string, service, "", "health: the service to check; empty: the whole server");
// Security (SECURITY.md).
ABSL_FLAG(bool, tls, false, "Connect with TLS, trusting the system's root CAs (implied by --tls_ca and --tls_cert)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA certificate(s) to verify the server's certificate with; implies TLS");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for a server that requires one (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name the server's certificate must carry, when it differs from the --target host");
ABSL_FLAG(std::string, token, "", "Bearer token, sent as call metadata 'authorization: Bearer <token>'");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token (surrounding whitespace ignored): keeps it out of the process list");

namespace matformer::cli {
namespace {

namespace v1 = ::matformer::v1;

constexpr int kUsageExit = 2;
constexpr int kRpcExit = 1;

int UsageError(const std::string& message) {
  std::fprintf(stderr, "matformer-cli: %s\n", message.c_str());
  return kUsageExit;
}

int RpcError(const grpc::Status& status) {
  std::fprintf(stderr, "matformer-cli: %s: %s\n",
               absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
               status.error_message().c_str());
  return kRpcExit;
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) json = "{}";
  std::cout << json << std::endl;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& flag, const std::vector<std::string>& values) {
  std::vector<int32_t> ids;
  for (const std::string& value : values) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(value, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", value, "' is not an integer"));
    }
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::string> ReadFlagFile(absl::string_view flag, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file.is_open()) return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": cannot open"));
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": cannot read"));
  return text;
}

// The channel's credentials from the TLS flags: plaintext when none is set.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key: set both or neither");
  }
  if (!absl::GetFlag(FLAGS_tls) && ca.empty() && cert.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;  // empty pem_root_certs: the system's roots
  for (const auto& [flag, path, pem] : {std::tuple("tls_ca", ca, &options.pem_root_certs),
                                        std::tuple("tls_cert", cert, &options.pem_cert_chain),
                                        std::tuple("tls_key", key, &options.pem_private_key)}) {
    if (path.empty()) continue;
    absl::StatusOr<std::string> text = ReadFlagFile(flag, path);
    if (!text.ok()) return text.status();
    *pem = *std::move(text);
  }
  return grpc::SslCredentials(options);
}

// "Bearer <token>" from --token or --token_file; empty when neither is set.
absl::StatusOr<std::string> Authorization() {
  std::string token = absl::GetFlag(FLAGS_token);
  const std::string file = absl::GetFlag(FLAGS_token_file);
  if (!token.empty() && !file.empty()) return absl::InvalidArgumentError("--token and --token_file: set one");
  if (!file.empty()) {
    absl::StatusOr<std::string> text = ReadFlagFile("token_file", file);
    if (!text.ok()) return text.status();
    token = std::string(absl::StripAsciiWhitespace(*text));
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token_file=", file, ": empty"));
  }
  return token.empty() ? "" : absl::StrCat("Bearer ", token);
}

std::string& AuthorizationHeader() {
  static std::string header;
  return header;
}

std::unique_ptr<grpc::ClientContext> NewContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!AuthorizationHeader().empty()) context->AddMetadata("authorization", AuthorizationHeader());
  if (const std::optional<absl::Duration> deadline = absl::GetFlag(FLAGS_deadline); deadline.has_value()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + *deadline));
  }
  return context;
}

double Millis(const google::protobuf::Duration& d) { return d.seconds() * 1e3 + d.nanos() / 1e6; }

std::string DescribeSubmodel(const v1::Submodel& submodel) {
  std::string text = absl::StrFormat("spec %s, %.2f M active params", submodel.name(), submodel.active_params() / 1e6);
  if (submodel.has_expected_loss()) absl::StrAppendFormat(&text, ", expected loss %.3f", submodel.expected_loss());
  if (!submodel.label().empty()) absl::StrAppendFormat(&text, " (%s)", submodel.label());
  return text;
}

// The routing fields shared by GenerateRequest and ScoreRequest.
template <typename Request>
absl::Status FillCommon(Request& request) {
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const std::vector<std::string> prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (!prompt_ids.empty()) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIds("prompt_ids", prompt_ids);
    if (!ids.ok()) return ids.status();
    request.mutable_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  } else {
    request.set_text(prompt);
  }
  if (const auto budget = absl::GetFlag(FLAGS_budget); budget.has_value()) {
    *request.mutable_latency_budget() =
        google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(*budget));
  }
  if (!absl::GetFlag(FLAGS_tier).empty()) request.set_tier(absl::GetFlag(FLAGS_tier));
  if (!absl::GetFlag(FLAGS_spec).empty()) request.set_spec_name(absl::GetFlag(FLAGS_spec));
  if (const auto loss = absl::GetFlag(FLAGS_max_expected_loss); loss.has_value()) request.set_max_expected_loss(*loss);
  return absl::OkStatus();
}

void PrintSummary(const v1::GenerateResponse& response) {
  const v1::Timings& t = response.timings();
  std::fprintf(stderr,
               "[%s; %d tokens, finish %s; queue %.1f ms, first token %.1f ms, total %.1f ms (predicted %.1f ms); "
               "request %s]\n",
               DescribeSubmodel(response.submodel()).c_str(), response.token_ids_size(),
               v1::FinishReason_Name(response.finish_reason()).c_str(), Millis(t.queue()),
               Millis(t.time_to_first_token()), Millis(t.total()), Millis(t.predicted_total()),
               response.request_id().c_str());
}

int Generate(v1::MatFormer::Stub& stub) {
  v1::GenerateRequest request;
  if (absl::Status filled = FillCommon(request); !filled.ok()) return UsageError(std::string(filled.message()));
  if (absl::GetFlag(FLAGS_chat)) {
    if (!request.has_text()) return UsageError("--chat sends --prompt as a user message; --prompt_ids cannot be chat");
    v1::ChatMessage* message = request.mutable_chat()->add_messages();  // replaces the text prompt (a oneof)
    message->set_role("user");
    message->set_content(absl::GetFlag(FLAGS_prompt));
  }
  v1::Sampling* sampling = request.mutable_sampling();
  sampling->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  sampling->set_top_k(absl::GetFlag(FLAGS_top_k));
  sampling->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  sampling->set_seed(absl::GetFlag(FLAGS_seed));
  if (const auto max_new = absl::GetFlag(FLAGS_max_new_tokens); max_new.has_value()) {
    request.set_max_new_tokens(*max_new);
  }
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) request.add_stop_sequences(stop);
  const bool json = absl::GetFlag(FLAGS_json);

  std::unique_ptr<grpc::ClientContext> context = NewContext();
  if (!absl::GetFlag(FLAGS_stream)) {
    v1::GenerateResponse response;
    const grpc::Status status = stub.Generate(context.get(), request, &response);
    if (!status.ok()) return RpcError(status);
    if (json) {
      PrintJson(response);
    } else {
      std::cout << response.text() << std::endl;
      PrintSummary(response);
    }
    return 0;
  }
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader = stub.GenerateStream(context.get(), request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    if (json) {
      PrintJson(message);
    } else if (message.has_summary()) {
      std::cout << std::endl;
      PrintSummary(message.summary());
    } else {
      std::cout << message.text() << std::flush;
    }
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return RpcError(status);
  return 0;
}

int Score(v1::MatFormer::Stub& stub) {
  v1::ScoreRequest request;
  if (absl::Status filled = FillCommon(request); !filled.ok()) return UsageError(std::string(filled.message()));
  const std::vector<std::string> continuation_ids = absl::GetFlag(FLAGS_continuation_ids);
  if (!continuation_ids.empty()) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIds("continuation_ids", continuation_ids);
    if (!ids.ok()) return UsageError(std::string(ids.status().message()));
    request.mutable_continuation_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  } else {
    request.set_continuation_text(absl::GetFlag(FLAGS_continuation));
  }
  v1::ScoreResponse response;
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  const grpc::Status status = stub.Score(context.get(), request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
    return 0;
  }
  for (int i = 0; i < response.token_ids_size(); ++i) {
    std::printf("token %d: logprob %.4f\n", response.token_ids(i), response.logprobs(i));
  }
  std::printf("total logprob %.4f over %d tokens (%s; total %.1f ms)\n", response.total_logprob(),
              response.token_ids_size(), DescribeSubmodel(response.submodel()).c_str(),
              Millis(response.timings().total()));
  return 0;
}

int Info(v1::MatFormer::Stub& stub) {
  v1::ModelInfo info;
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  const grpc::Status status = stub.GetModelInfo(context.get(), v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(info);
    return 0;
  }
  const v1::Architecture& a = info.architecture();
  std::printf("model %s: %d layers, hidden %lld, vocab %lld, context %lld, %s; policy %s, over budget: %s\n",
              info.model_dir().c_str(), a.num_layers(), static_cast<long long>(a.hidden_size()),
              static_cast<long long>(a.vocab_size()), static_cast<long long>(a.max_position_embeddings()),
              a.dtype().c_str(), info.policy().c_str(), info.over_budget().c_str());
  for (const v1::Granularity& g : info.granularities()) {
    std::printf("  granularity %-4s width %6lld  %.2f M active params\n", g.name().c_str(),
                static_cast<long long>(g.width()), g.active_params() / 1e6);
  }
  for (const v1::Tier& tier : info.tiers()) {
    std::printf("  tier %-12s budget %8.1f ms  priority %d\n", tier.name().c_str(), Millis(tier.latency_budget()),
                tier.priority());
  }
  std::printf("  quality frontier (best first):\n");
  for (const v1::Submodel& submodel : info.quality_frontier()) {
    std::printf("    %s\n", DescribeSubmodel(submodel).c_str());
  }
  const v1::PleCacheStats& ple = info.ple_cache();
  std::printf("  PLE cache: %llu entries, %.1f / %.1f MiB, %llu hits, %llu misses\n",
              static_cast<unsigned long long>(ple.entries()), ple.bytes() / 1048576.0, ple.max_bytes() / 1048576.0,
              static_cast<unsigned long long>(ple.hits()), static_cast<unsigned long long>(ple.misses()));
  const v1::KvPoolStats& kv = info.kv_pool();
  std::printf("  KV pool: %lld / %lld blocks of %d tokens in use (%.1f MiB, %s)\n",
              static_cast<long long>(kv.blocks_used()), static_cast<long long>(kv.blocks_total()), kv.block_tokens(),
              kv.bytes() / 1048576.0, kv.dtype().c_str());
  return 0;
}

int Tokenize(v1::MatFormer::Stub& stub) {
  v1::TokenizeRequest request;
  const std::vector<std::string> prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (!prompt_ids.empty()) {
    absl::StatusOr<std::vector<int32_t>> ids = ParseIds("prompt_ids", prompt_ids);
    if (!ids.ok()) return UsageError(std::string(ids.status().message()));
    request.mutable_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  } else {
    request.set_text(absl::GetFlag(FLAGS_prompt));
  }
  v1::TokenizeResponse response;
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  const grpc::Status status = stub.Tokenize(context.get(), request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
  } else if (request.has_text()) {
    std::cout << absl::StrJoin(response.token_ids(), ",") << std::endl;
  } else {
    std::cout << response.text() << std::endl;
  }
  return 0;
}

// Exits 0 only when the server (or --service) reports SERVING.
int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  const grpc::Status status = stub->Check(context.get(), request, &response);
  if (!status.ok()) return RpcError(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(response);
  } else {
    std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()) << std::endl;
  }
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : kRpcExit;
}

int Run(const std::string& command) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = ChannelCredentials();
  if (!credentials.ok()) return UsageError(std::string(credentials.status().message()));
  absl::StatusOr<std::string> authorization = Authorization();
  if (!authorization.ok()) return UsageError(std::string(authorization.status().message()));
  AuthorizationHeader() = *std::move(authorization);
  grpc::ChannelArguments arguments;
  if (!absl::GetFlag(FLAGS_tls_server_name).empty()) {
    arguments.SetSslTargetNameOverride(absl::GetFlag(FLAGS_tls_server_name));
  }
  const std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), *credentials, arguments);
  if (command == "health") return Health(channel);
  const std::unique_ptr<v1::MatFormer::Stub> stub = v1::MatFormer::NewStub(channel);
  if (command == "generate") return Generate(*stub);
  if (command == "score") return Score(*stub);
  if (command == "info") return Info(*stub);
  if (command == "tokenize") return Tokenize(*stub);
  return UsageError(absl::StrCat("unknown command '", command, "' (generate, score, info, health, tokenize)"));
}

}  // namespace
}  // namespace matformer::cli

int main(int argc, char** argv) {
  // --help lists this file's flags (absl's default looks for a file named after the binary;
  // it passes the file name without its leading slash).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) { return absl::EndsWith(__FILE__, file); };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "Client of matformer-server.\n"
      "Usage: matformer-cli <generate|score|info|health|tokenize> [--flags]\n"
      "  matformer-cli generate --prompt \"In the beginning\" --stream --budget=250ms\n"
      "  matformer-cli score --prompt \"In the beginning\" --continuation \" God created\" --spec=S\n"
      "  matformer-cli info --json");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 2) {
    return matformer::cli::UsageError("expected one command: generate, score, info, health or tokenize");
  }
  return matformer::cli::Run(positional[1]);
}
