// parley: the chat server binary. See `parley --help` and config/parley.toml.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "parley/auth/jwt.h"
#include "parley/config/config.h"
#include "parley/server/server.h"
#include "parley/util/clock.h"

namespace {

#ifdef PARLEY_WITH_JEMALLOC
constexpr const char* kAllocator = "jemalloc";
#else
constexpr const char* kAllocator = "glibc malloc";
#endif

int Serve(const parley::Config& config) {
  // Signals are taken synchronously by this thread; the reactor threads inherit the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  parley::server::Server server(config);
  if (absl::Status status = server.Start(); !status.ok()) {
    std::fprintf(stderr, "parley: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  auto address = parley::ParseListenAddress(config.server.listen);
  const std::string host = address->ipv6 ? "[" + address->host + "]" : address->host;
  std::printf("parley %s listening on http://%s:%u/ (%d threads, auth mode \"%s\", data %s)\n",
              PARLEY_VERSION, host.c_str(), server.port(), server.threads(),
              config.auth.mode.c_str(), config.storage.data_dir.c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("parley: %s received, shutting down\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  server.Stop();
  return server.Wait();
}

}  // namespace

int main(int argc, char** argv) {
  auto cli = parley::ParseCommandLine(argc, argv);
  if (!cli.ok()) {
    std::fprintf(stderr, "parley: %s\nTry 'parley --help'.\n",
                 std::string(cli.status().message()).c_str());
    return 2;
  }
  switch (cli->action) {
    case parley::CommandLine::Action::kHelp:
      std::cout << parley::UsageText();
      return 0;
    case parley::CommandLine::Action::kVersion:
      std::printf("parley %s (allocator: %s)\n", PARLEY_VERSION, kAllocator);
      return 0;
    case parley::CommandLine::Action::kPrintConfig:
      std::cout << parley::RenderConfigToml(cli->config, /*hide_secrets=*/true);
      return 0;
    case parley::CommandLine::Action::kToken: {
      if (cli->config.auth.jwt_secret.empty()) {
        std::fprintf(stderr,
                     "parley token: no auth.jwt_secret configured (set it in the config "
                     "file, PARLEY_JWT_SECRET or --auth.jwt_secret)\n");
        return 2;
      }
      const int64_t exp = cli->token_ttl_s > 0 ? parley::WallMillis() / 1000 + cli->token_ttl_s : 0;
      std::printf(
          "%s\n",
          parley::auth::SignHs256(cli->token_user, exp, cli->config.auth.jwt_secret).c_str());
      return 0;
    }
    case parley::CommandLine::Action::kServe:
      return Serve(cli->config);
  }
  return 0;
}
