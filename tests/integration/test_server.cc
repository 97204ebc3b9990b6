#include "tests/integration/test_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace matformer::integration {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Starts `argv` with stdout and stderr appended to `log_path`. The child is
// killed when the thread that started it ends, so even a test binary killed
// by its ctest TIMEOUT leaves no server behind.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  // Everything the child needs is prepared before fork: after it, only
  // async-signal-safe calls.
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent is already gone
    const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int null = open("/dev/null", O_RDONLY);
    if (log < 0 || null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(log, STDOUT_FILENO) < 0 ||
        dup2(log, STDERR_FILENO) < 0) {
      _exit(127);
    }
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// The exit code (-1 for a signal) once `pid` exits within `timeout`.
std::optional<int> Reap(pid_t pid, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (done < 0 || absl::Now() >= end) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace

std::string MakeTempDir(const std::string& name) {
  std::string pattern = absl::StrCat(testing::TempDir(), "/", name, "-XXXXXX");
  return mkdtemp(pattern.data()) == nullptr ? "" : pattern;
}

CommandResult RunCommand(const std::vector<std::string>& argv, absl::Duration timeout) {
  const std::string dir = MakeTempDir("command");
  const std::string log = dir + "/output";
  CommandResult result;
  absl::StatusOr<pid_t> pid = Spawn(argv, log);
  if (!pid.ok()) {
    result.output = std::string(pid.status().message());
    return result;
  }
  std::optional<int> code = Reap(*pid, timeout);
  if (!code.has_value()) {
    kill(*pid, SIGKILL);
    Reap(*pid, absl::Seconds(10));
  }
  result.exit_code = code.value_or(-1);
  result.output = ReadFile(log);
  std::filesystem::remove_all(dir);
  return result;
}

absl::Status MakeRandomModel(const std::string& directory) {
  const CommandResult result =
      RunCommand({MATFORMER_MAKE_RANDOM_MODEL, "--out=" + directory,
                  std::string("--tokenizer=") + MATFORMER_SOURCE_DIR + "/tests/data/gemma3n-tiny/tokenizer.model",
                  "--vocab=128", "--layers=4", "--hidden=64", "--intermediate=256", "--heads=2", "--kv_heads=1",
                  "--head_dim=32", "--ple_dim=16", "--max_position_embeddings=2048", "--dtype=f32", "--seed=2"},
                 absl::Seconds(120));
  if (result.exit_code != 0) return absl::InternalError("matformer-make-random-model failed: " + result.output);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const std::vector<std::string>& flags,
                                                                    absl::Duration timeout) {
  const std::string dir = MakeTempDir("server");
  std::vector<std::string> argv = {MATFORMER_SERVER_BINARY, "--host=127.0.0.1", "--port=0", "--metrics_port=0"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  absl::StatusOr<pid_t> pid = Spawn(argv, dir + "/server.log");
  if (!pid.ok()) return pid.status();
  std::unique_ptr<ServerProcess> server(new ServerProcess(*pid, dir + "/server.log"));
  const std::regex listening("listening on 127\\.0\\.0\\.1:([0-9]+)");
  const std::regex metrics("metrics on 127\\.0\\.0\\.1:([0-9]+)");
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    const std::string log = server->Log();
    std::smatch grpc_match, metrics_match;
    if (std::regex_search(log, grpc_match, listening) && std::regex_search(log, metrics_match, metrics)) {
      server->port_ = std::stoi(grpc_match[1]);
      server->metrics_port_ = std::stoi(metrics_match[1]);
      return server;
    }
    if (std::optional<int> code = Reap(*pid, absl::ZeroDuration()); code.has_value()) {
      server->exited_ = true;
      return absl::InternalError(absl::StrCat("matformer-server exited with ", *code, " during start-up:\n", log));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError("matformer-server did not log its ports in time:\n" + server->Log());
}

ServerProcess::~ServerProcess() {
  if (!exited_) {
    kill(pid_, SIGKILL);
    Reap(pid_, absl::Seconds(30));
  }
  std::filesystem::remove_all(std::filesystem::path(log_path_).parent_path());
}

std::string ServerProcess::target() const { return absl::StrCat("127.0.0.1:", port_); }

void ServerProcess::Signal(int signal_number) const { kill(pid_, signal_number); }

absl::StatusOr<int> ServerProcess::WaitForExit(absl::Duration timeout) {
  std::optional<int> code = Reap(pid_, timeout);
  if (!code.has_value()) return absl::DeadlineExceededError("matformer-server did not exit in time");
  exited_ = true;
  return *code;
}

std::string ServerProcess::Log() const { return ReadFile(log_path_); }

absl::StatusOr<std::string> ScrapeMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to the metrics port ", port));
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("short write to the metrics port");
  }
  std::string response;
  char buffer[65536];
  ssize_t n = 0;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || body == std::string::npos || response.find(" 200 ") > body) {
    return absl::InternalError("bad metrics response: " + response.substr(0, 200));
  }
  return response.substr(body + 4);
}

std::optional<double> MetricValue(const std::string& metrics, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(metrics, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(line, &value)) return value;
  }
  return std::nullopt;
}

}  // namespace matformer::integration
