// The WebSocket client side of the load tool: one epoll event loop per worker thread, owning
// many connections. Each connection binds to one of several loopback source addresses
// (127.0.0.1, .2, ...) before connecting, so the 4-tuples are not limited to one address's
// ephemeral ports; performs the RFC 6455 opening handshake (checking Sec-WebSocket-Accept);
// sends masked frames; parses the server's frames (fragmented messages, ping -> pong, close
// handshake). Everything written during one loop iteration leaves in one write per socket.
//
// A Worker and its connections belong to one thread. Callbacks into the Handler are never
// reentrant: OnClosed is delivered after the current batch of events, and the Conn is recycled
// after it returns.
#pragma once

#include <sys/epoll.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "util.h"

namespace parley::load {

struct ClientConfig {
  uint32_t server_ip = 0x7F000001;  // host order
  uint16_t port = 8080;
  int src_addrs = 8;  // bind to 127.0.0.1 .. 127.0.0.<src_addrs>
  std::string path = "/ws";
  int64_t ping_interval_ns = 10'000'000'000;  // a ping frame after this much silence
  int64_t close_timeout_ns = 5'000'000'000;   // close handshake or upgrade taking longer: abort
};

class Worker;

// How a connection ended.
struct CloseInfo {
  int code = 0;       // WebSocket close code received (0: none)
  int sys_errno = 0;  // socket error (connect refused, reset, ...)
  bool upgraded = false;
  bool by_us = false;     // we started the close (Close() or Abort())
  std::string_view what;  // short reason for counters: "eof", "connect", "upgrade", ...
};

class Conn {
 public:
  enum class State : uint8_t { kConnecting, kUpgrading, kOpen, kClosing, kClosed };

  uint64_t tag = 0;        // the scenario's own reference
  int64_t started_ns = 0;  // when Connect() was called

  State state() const { return state_; }
  bool open() const { return state_ == State::kOpen; }
  // Queues one masked text frame; it is written at the end of the loop iteration.
  void SendText(std::string_view text);
  void SendPing();
  // Starts the close handshake (the server answers and closes the TCP connection).
  void Close(uint16_t code = 1000);
  // Drops the connection at once.
  void Abort();
  size_t pending_output() const { return out_.size() - out_off_; }

 private:
  friend class Worker;
  void AppendFrame(uint8_t opcode, std::string_view payload);
  void MarkDirty();
  // Parses complete frames in data; returns bytes consumed.
  size_t ParseFrames(char* data, size_t len);
  size_t ParseUpgrade(char* data, size_t len);
  void Terminate(std::string_view what, int err);

  Worker* w_ = nullptr;
  int fd_ = -1;
  State state_ = State::kClosed;
  bool dirty_ = false;
  bool close_sent_ = false;
  bool by_us_ = false;
  bool upgraded_ = false;
  uint8_t frag_opcode_ = 0;
  uint16_t close_code_ = 0;
  int64_t last_tx_ns_ = 0;
  int64_t closing_since_ns_ = 0;
  std::array<char, 24> key_{};
  std::string in_;
  std::string out_;
  size_t out_off_ = 0;
  std::string frag_;
  CloseInfo info_;
};

class Handler {
 public:
  virtual ~Handler() = default;
  virtual void OnOpen(Conn& c) = 0;
  virtual void OnText(Conn& c, std::string_view text) = 0;
  // The Conn is recycled after this returns.
  virtual void OnClosed(Conn& c, const CloseInfo& info) = 0;
  // Called once per loop iteration, before waiting.
  virtual void OnTick(int64_t now_ns) {}
  // When the handler next wants OnTick (the loop also wakes every 2 ms regardless).
  virtual int64_t NextDueNs() { return INT64_MAX; }
};

struct WorkerStats {
  uint64_t connects = 0, connect_errors = 0, upgrade_errors = 0;
  uint64_t frames_in = 0, frames_out = 0, bytes_in = 0, bytes_out = 0;
  uint64_t closed_by_server = 0, resets = 0, protocol_errors = 0;
};

class Worker {
 public:
  Worker(const ClientConfig& cfg, int index, int workers);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void set_handler(Handler* h) { handler_ = h; }
  int index() const { return index_; }
  Rng& rng() { return rng_; }
  const WorkerStats& stats() const { return stats_; }
  int64_t now_ns() const { return now_ns_; }

  // Starts a non-blocking connect; the Conn reports OnOpen or OnClosed later. Never null: a
  // connection that fails at once is reported through OnClosed after this iteration.
  Conn* Connect(uint64_t tag);
  size_t live() const { return live_; }

  // One loop iteration: tick, wait up to max_wait_ns for events, dispatch, flush.
  void RunOnce(int64_t max_wait_ns = 2'000'000);

 private:
  friend class Conn;
  void HandleEvents(Conn* c, uint32_t events);
  void OnConnected(Conn* c);
  void ReadAll(Conn* c, bool hangup);
  void Flush(Conn* c);
  void FlushDirty();
  void Reap();
  void Sweep();

  ClientConfig cfg_;
  int index_;
  int workers_;
  int ep_ = -1;
  Handler* handler_ = nullptr;
  Rng rng_;
  WorkerStats stats_;
  int64_t now_ns_ = 0;
  int64_t next_sweep_ns_ = 0;
  uint64_t connect_seq_ = 0;
  size_t live_ = 0;
  std::vector<std::unique_ptr<Conn>> all_;  // owns every Conn ever made (recycled)
  std::vector<Conn*> free_;
  std::vector<Conn*> dirty_;
  std::vector<Conn*> dead_;  // closed this iteration; OnClosed pending
  std::vector<char> rbuf_;
  std::vector<epoll_event> events_;
};

}  // namespace parley::load
