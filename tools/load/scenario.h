// Scenario plumbing: options, the worker pool, run phases, the server probe and the parsed
// form of a server frame. Each scenario is one function that sets up per-worker drivers,
// steers the phases from the main thread and fills the report.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "client.h"
#include "proc.h"
#include "util.h"

namespace parley::load {

struct Options {
  std::string scenario;
  std::string server = "127.0.0.1:8080";
  uint32_t server_ip = 0x7F000001;
  uint16_t port = 8080;
  int threads = 1;
  double duration_s = 10;
  double warmup_s = 2;
  double grace_s = 3;
  double setup_timeout_s = 90;
  int src_addrs = 8;
  int server_pid = 0;
  // throughput / latency
  int pairs = 100;
  int window = 16;
  double rate = 5000;
  int body_bytes = 100;
  int ack_every = 50;
  int64_t max_messages = 0;  // 0: bounded by time only
  // throughput / latency / fanout: cmids as clients make them (random, like UUIDs) or a
  // per-sender counter (neighbouring keys in the server's dedupe index: flatters its cost)
  bool random_cmids = true;
  // idle / connect
  int conns = 9000;
  int concurrency = 256;
  int rounds = 5;
  // fanout
  int groups = 20;
  int group_size = 200;
  // mixed
  int users = 2000;
  int mixed_group_size = 20;
  int watch = 20;
  double churn = 0;  // reconnects per second, 0 = users / 20
  std::string run_id;
  std::string json_out;
  std::string label;  // free text copied into the JSON line
  std::string device = "load";
};

// "" on success, else what is wrong.
std::string ParseOptions(int argc, char** argv, Options* o);
std::string Usage();

// Run phases, set by the main thread and read by the workers every loop iteration.
enum Phase : int { kSetup = 0, kRun = 1, kDrain = 2, kStop = 3 };

struct Shared {
  std::atomic<int> phase{kSetup};
  std::atomic<int64_t> window_start_ns{INT64_MAX};  // latencies are recorded for sends in
  std::atomic<int64_t> window_end_ns{INT64_MAX};    // [start, end)
  bool InWindow(int64_t t) const {
    return t >= window_start_ns.load(std::memory_order_relaxed) &&
           t < window_end_ns.load(std::memory_order_relaxed);
  }
};

// A cache-line sized counter written by one worker and read by the main thread.
struct alignas(64) Counter {
  std::atomic<uint64_t> v{0};
  void Add(uint64_t n = 1) {
    v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t Get() const { return v.load(std::memory_order_relaxed); }
};

// A server frame, the members the tool looks at. Strings are raw (ids have no escapes).
struct Frame {
  std::string_view op, conv, from, cmid, body, code, user, status, group, change, list;
  int64_t id = -1, inbox = -1, seq = -1, ts = -1, inbox_seq = -1;
  bool dup = false, more = false;
};
bool ParseFrame(std::string_view text, Frame* f);
// Calls f(raw element) for each element of a JSON array.
bool ForEachElement(std::string_view array, const std::function<void(std::string_view)>& f);

// The base of every per-worker driver: error accounting and the connection counters.
class DriverBase : public Handler {
 public:
  DriverBase(Worker& w, Shared& shared, const Options& o) : w_(w), shared_(shared), o_(o) {}
  Worker& worker() { return w_; }
  std::map<std::string, uint64_t> errors;  // error code -> count
  std::map<std::string, uint64_t> closes;  // how connections ended unexpectedly
  Counter ready;                           // setup progress
  Counter connect_failures;                // TCP connect failed (server gone?)

 protected:
  void CountError(const Frame& f) { ++errors[std::string(f.code)]; }
  void CountClose(const CloseInfo& info);
  static void AppendHello(std::string* out, int64_t id, std::string_view user,
                          std::string_view device);
  Worker& w_;
  Shared& shared_;
  const Options& o_;
};

// One thread per worker, each running its worker's loop until Stop().
class Pool {
 public:
  using Factory = std::function<std::unique_ptr<DriverBase>(Worker&)>;
  Pool(const Options& o, Factory make);
  ~Pool();
  void Start();
  void Stop();
  size_t size() const { return workers_.size(); }
  Worker& worker(size_t i) { return *workers_[i]; }
  DriverBase& driver(size_t i) { return *drivers_[i]; }
  template <typename T>
  T& driver_as(size_t i) {
    return static_cast<T&>(*drivers_[i]);
  }
  // Sum of one value over all drivers.
  uint64_t Sum(const std::function<uint64_t(DriverBase&)>& f);
  // Merged connection statistics and error counts (after Stop()).
  WorkerStats TotalStats();
  std::map<std::string, uint64_t> TotalErrors();
  std::map<std::string, uint64_t> TotalCloses();

 private:
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<DriverBase>> drivers_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
};

// Server and machine figures over a measurement window.
class Probe {
 public:
  explicit Probe(int server_pid) : pid_(server_pid) {}
  void Begin();
  void End();
  bool has_server() const { return begin_.ok && end_.ok; }
  double seconds() const { return static_cast<double>(end_ns_ - begin_ns_) / 1e9; }
  int64_t server_cpu_us() const { return end_.cpu_us - begin_.cpu_us; }
  const ProcSample& server_begin() const { return begin_; }
  const ProcSample& server_end() const { return end_; }
  int64_t tool_cpu_us() const { return self_end_ - self_begin_; }
  // Share of the machine's CPUs busy (all processes), 0-100.
  double machine_busy_pct() const;
  // Fills the common report fields; `per` is the unit the server CPU is divided by
  // (e.g. delivered messages) and per_name its JSON key.
  void Report(JsonLine* j, std::string* text, uint64_t per, std::string_view per_name) const;

 private:
  int pid_;
  int64_t begin_ns_ = 0, end_ns_ = 0;
  ProcSample begin_, end_;
  SystemSample sys_begin_, sys_end_;
  int64_t self_begin_ = 0, self_end_ = 0;
};

// Waits until pred() holds or the timeout passes; true if it held. Polls every 10 ms.
bool WaitFor(double timeout_s, const std::function<bool()>& pred);
void SleepSeconds(double s);

// Appends the error/close counts, connection statistics and the rate-limit reminder.
void ReportCommon(Pool& pool, JsonLine* j, std::string* text);

// The setup phase every scenario shares: waits until ready() reaches `want` or failures() is
// non-zero, and reports "setup: <ready>/<want> <what> in <s> s" (and "setup_s"). On failure it
// stops the pool, writes the report with "ok": false and returns false.
bool AwaitSetup(Pool& pool, Shared& shared, const Options& o, JsonLine* j, std::string* text,
                int64_t setup_start_ns, uint64_t want, const char* what,
                const std::function<uint64_t()>& ready, const std::function<uint64_t()>& failures);

// The measured window: warm-up, then o.duration_s with the probe running. Returns how much each
// counter grew inside the window; the phase is kDrain afterwards.
std::vector<uint64_t> MeasureWindow(Shared& shared, const Options& o, Probe& probe,
                                    const std::vector<std::function<uint64_t()>>& counters);

// Scenarios. Each returns 0 on success and fills the report; text is the human summary.
int RunPairs(const Options& o, JsonLine* j, std::string* text);  // throughput, latency
int RunIdle(const Options& o, JsonLine* j, std::string* text);
int RunConnect(const Options& o, JsonLine* j, std::string* text);
int RunFanout(const Options& o, JsonLine* j, std::string* text);
int RunMixed(const Options& o, JsonLine* j, std::string* text);

}  // namespace parley::load
