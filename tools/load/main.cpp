// parley-load: drives a running Parley server over loopback WebSocket connections and
// reports what it measured (see Usage()). Bounded in time and count; stops by itself.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "proc.h"
#include "scenario.h"

using namespace parley::load;

int main(int argc, char** argv) {
  Options o;
  std::string err = ParseOptions(argc, argv, &o);
  if (err == "help") {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  if (!err.empty()) {
    std::fprintf(stderr, "parley-load: %s\n\n%s", err.c_str(), Usage().c_str());
    return 64;
  }
  signal(SIGPIPE, SIG_IGN);

  // Every connection is one descriptor in this process; keep some for the rest.
  const int64_t fd_limit = OpenFileLimit();
  int64_t needed = 0;
  if (o.scenario == "throughput" || o.scenario == "latency") needed = 2LL * o.pairs;
  if (o.scenario == "idle" || o.scenario == "connect") needed = o.conns;
  if (o.scenario == "fanout") needed = static_cast<int64_t>(o.groups) * o.group_size;
  if (o.scenario == "mixed") needed = o.users;
  if (needed > fd_limit - 64) {
    std::fprintf(stderr,
                 "parley-load: %s needs %lld connections but this process may open only %lld "
                 "files (ulimit -n); lower the count\n",
                 o.scenario.c_str(), static_cast<long long>(needed),
                 static_cast<long long>(fd_limit));
    return 64;
  }

  JsonLine j;
  j.Str("scenario", o.scenario).Str("run_id", o.run_id).Str("server", o.server);
  j.Int("server_pid", o.server_pid);
  if (!o.label.empty()) j.Str("label", o.label);
  std::string text;
  int rc;
  if (o.scenario == "throughput" || o.scenario == "latency") {
    rc = RunPairs(o, &j, &text);
  } else if (o.scenario == "idle") {
    rc = RunIdle(o, &j, &text);
  } else if (o.scenario == "connect") {
    rc = RunConnect(o, &j, &text);
  } else if (o.scenario == "fanout") {
    rc = RunFanout(o, &j, &text);
  } else if (o.scenario == "mixed") {
    rc = RunMixed(o, &j, &text);
  } else {
    std::fprintf(stderr, "parley-load: unknown scenario '%s'\n\n%s", o.scenario.c_str(),
                 Usage().c_str());
    return 64;
  }
  const std::string line = j.Build();
  std::fputs(text.c_str(), stdout);
  std::printf("JSON %s\n", line.c_str());
  std::fflush(stdout);
  if (!o.json_out.empty()) {
    std::ofstream f(o.json_out, std::ios::app);
    f << line << "\n";
    if (!f) std::fprintf(stderr, "parley-load: could not write %s\n", o.json_out.c_str());
  }
  return rc;
}
