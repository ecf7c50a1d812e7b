// One io_uring event loop per core: sockets, timers and cross-core messages.
//
// Guarantees:
// - Everything a Reactor owns (its ring, its connections, its timer wheel) is touched only by
//   its own thread. The only entry points from other threads are CoreMesh::SubmitTo (a task
//   that runs on this reactor) and Notify() (wake the loop for a module's own queue).
// - Receives use a multishot recv per connection over a ring of provided buffers shared by
//   the core, so an idle connection holds no read buffer. Only a partial frame left at the end
//   of a read is copied into the connection.
// - Writes are appended to the connection's output buffer and sent once per loop iteration
//   (many events written in one tick leave in one send). A connection has at most one send in
//   flight; unsent bytes are visible to the protocol layer for back-pressure.
#pragma once

#include <liburing.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "parley/net/spsc_queue.h"

namespace parley::net {

class Connection;
class CoreMesh;
class Reactor;

using Task = absl::AnyInvocable<void()>;

// The protocol layer of one connection (HTTP, then WebSocket after the upgrade).
class ConnectionHandler {
 public:
  virtual ~ConnectionHandler() = default;
  // Bytes arrived. `data` holds any bytes left unconsumed last time followed by the new ones;
  // it may be modified in place (WebSocket unmasking). Returns how many bytes were consumed;
  // the rest is kept and offered again with the next arrival.
  virtual size_t OnData(Connection& conn, std::span<char> data) = 0;
  // The deadline set with Connection::SetDeadline has passed.
  virtual void OnDeadline(Connection& conn, int64_t now_ms) {}
  // The whole output buffer has been sent (useful to resume after back-pressure).
  virtual void OnDrained(Connection& conn) {}
  // The server is shutting down: say goodbye (e.g. close 1001) and close.
  virtual void OnShutdown(Connection& conn);
  // The reactor's connections together hold more unsent output than
  // ReactorOptions::max_output_bytes, and this one holds the most: drop what can be dropped and
  // close (e.g. with a reason for the peer). The connection then has kShedLingerMs to take its
  // last bytes before it is cut off. The default discards the output and closes at once.
  virtual void OnOutputBudget(Connection& conn);
  // The connection is gone (peer closed, error, or Close finished). Last call.
  virtual void OnClosed(Connection& conn) {}
};

// A remote IP address (IPv4 mapped into IPv6), the key of the per-address connection count.
using PeerKey = std::array<uint8_t, 16>;

// A TCP connection owned by one reactor.
class Connection {
 public:
  Reactor& reactor() const { return *reactor_; }
  int fd() const { return fd_; }
  uint64_t id() const { return id_; }  // unique per process, never reused

  // Output. Append directly to out() and call Flush(), or call Write().
  // A connection that starts writing again borrows a spare buffer of its reactor, so a busy
  // connection does not allocate one per send, and an idle one holds none.
  std::string& out();
  void Write(std::string_view bytes) {
    out().append(bytes);
    Flush();
  }
  // Schedules a send at the end of this loop iteration (cheap to call repeatedly).
  void Flush();
  // Bytes accepted by Write but not yet handed to the kernel.
  size_t PendingOutput() const { return out_.size() + (inflight_.size() - inflight_sent_); }

  // Closes after everything written so far is sent (and stops reading now).
  void CloseAfterFlush();
  // Closes at once, discarding unsent output.
  void Abort();
  bool closing() const { return closing_; }
  bool detaching() const { return detaching_; }

  // Replaces the protocol handler (e.g. HTTP -> WebSocket). Safe inside OnData: the old
  // handler is destroyed after the current callback returns.
  void SetHandler(std::unique_ptr<ConnectionHandler> handler);
  ConnectionHandler* handler() const { return handler_.get(); }

  // One deadline per connection; the handler's OnDeadline runs once it passes (resolution
  // is the reactor tick). 0 clears it.
  void SetDeadline(int64_t mono_ms);
  int64_t deadline() const { return deadline_ms_; }

  // Bytes buffered for a partial message (memory accounting).
  size_t BufferedInput() const { return in_.size(); }

  // How long a connection closed for the reactor's output budget may take to send its last
  // bytes (the close frame behind what is already in the kernel's hands).
  static constexpr int64_t kShedLingerMs = 5000;

 private:
  friend class Reactor;
  Connection(Reactor* reactor, int fd, uint64_t id) : reactor_(reactor), fd_(fd), id_(id) {}

  Reactor* reactor_;
  int fd_;
  uint64_t id_;
  std::unique_ptr<ConnectionHandler> handler_;
  std::unique_ptr<ConnectionHandler> retired_handler_;
  std::string in_;        // unconsumed input (partial frame), usually empty
  std::string out_;       // written, not yet sent
  std::string inflight_;  // handed to the kernel
  size_t inflight_sent_ = 0;
  size_t accounted_output_ = 0;  // this connection's share of Reactor::output_bytes_
  int64_t deadline_ms_ = 0;
  int64_t wheel_due_ = 0;  // due time of this connection's live timer-wheel entry, 0 if none
  uint32_t slot_ = 0;      // index in the reactor's connection table
  PeerKey peer_{};         // remote address, for the per-address connection count
  uint32_t ops_in_flight_ = 0;
  bool recv_armed_ = false;
  bool send_in_flight_ = false;
  bool dirty_ = false;
  bool closing_ = false;    // no more reads; close once output is sent
  bool closed_ = false;     // fd closed / peer gone; waiting for ops to finish
  bool detaching_ = false;  // being handed to another core (Reactor::Detach)
  bool in_callback_ = false;
};

struct ReactorOptions {
  unsigned ring_entries = 4096;
  uint32_t recv_buffer_count = 1024;  // provided buffers per core (power of two)
  uint32_t recv_buffer_size = 16384;
  int64_t tick_ms = 50;               // timer resolution
  uint32_t max_connections = 100000;  // per reactor
  // Connections from one remote address on this reactor (0 = no limit). The process-wide limit
  // is split evenly between the reactors: SO_REUSEPORT spreads one address's connections over
  // all of them.
  uint32_t max_connections_per_address = 0;
  // Unsent output of all this reactor's connections together (0 = no limit). Past it, the
  // connections holding the most are shed (ConnectionHandler::OnOutputBudget) until the rest
  // fits. Checked once per loop iteration, before output is handed to the kernel.
  uint64_t max_output_bytes = 0;
};

// Probed kernel features, reported at start-up.
struct ReactorFeatures {
  bool msg_ring = false;       // IORING_OP_MSG_RING for cross-core wake-ups
  bool defer_taskrun = false;  // IORING_SETUP_DEFER_TASKRUN | SINGLE_ISSUER
  bool multishot_accept = true;
  // A sparse table of io_uring direct descriptors for refusing clients when the process is out
  // of descriptors (accept into the ring's own table, which uses no slot of the process's).
  bool direct_refusals = false;
};

// A socket handed from one core to another (e.g. to the core that owns the user after
// `hello`): the descriptor plus bytes already read but not consumed, and bytes written but not
// yet sent. Nothing is lost or reordered in the hand-over.
struct DetachedSocket {
  int fd = -1;
  PeerKey peer{};  // read once, at accept
  std::string input;
  std::string output;
};

// Creates the handler for a newly accepted connection.
using AcceptHandlerFactory = std::function<std::unique_ptr<ConnectionHandler>(Connection&)>;

class Reactor {
 public:
  // Spare output buffers: from 256 B to 64 KiB of capacity, at most 256 of them (<= 16 MiB).
  static constexpr size_t kMinSpareOut = 256;
  static constexpr size_t kMaxSpareOut = 64 << 10;
  static constexpr size_t kMaxSpareOutCount = 256;

  Reactor(int core, ReactorOptions options, CoreMesh* mesh);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Runs on the reactor's own thread, before Run: creates the ring and buffers.
  absl::Status Init();
  // Starts accepting on a listening socket (this core's own SO_REUSEPORT socket). Sets
  // TCP_NODELAY on it, which every accepted connection inherits.
  void Listen(int listen_fd, AcceptHandlerFactory factory);
  // The loop; returns after Stop and the drain of every connection.
  void Run();

  // Any thread. Wakes the loop so that pollers run soon.
  void Notify();
  // Loop thread: asks Run to return once every connection has closed or `grace_ms` passed.
  // Listeners close at once; every connection gets OnShutdown.
  void BeginShutdown(int64_t grace_ms);

  // Loop thread: registers a function run on every loop iteration (e.g. draining a storage
  // completion queue filled by another thread, which calls Notify()).
  void AddPoller(std::function<void()> poller) { pollers_.push_back(std::move(poller)); }

  // Loop thread: runs `task` on this reactor after the current event (never re-entrantly).
  void Defer(Task task) { deferred_.push_back(std::move(task)); }

  // Loop thread: runs `task` once `delay_ms` has passed (tick resolution).
  void RunAfter(int64_t delay_ms, Task task);

  // Loop thread: Run keeps going during shutdown while any check returns true (e.g. a storage
  // writer with commits in flight), up to the grace deadline.
  void AddDrainCheck(std::function<bool()> busy) { drain_checks_.push_back(std::move(busy)); }

  // Loop thread: stops reading `conn`, waits for its in-flight operations, and passes the socket
  // to `done` (still on this thread). The connection's handler is destroyed; the caller must
  // have taken whatever state it needs to carry over first.
  void Detach(Connection* conn, absl::AnyInvocable<void(DetachedSocket)> done);
  // Loop thread: takes over a detached socket. `factory` creates the handler; pending output is
  // sent first, then pending input is delivered to the handler.
  void Adopt(DetachedSocket socket, const AcceptHandlerFactory& factory);

  int core() const { return core_; }
  const ReactorFeatures& features() const { return features_; }
  int ring_fd() const { return ring_.ring_fd; }
  size_t connection_count() const { return live_connections_; }
  uint64_t refused_count() const {
    return refused_.load(std::memory_order_relaxed);
  }                                           // connections refused (limits, EMFILE)
  int64_t now_ms() const { return now_ms_; }  // monotonic, updated every iteration
  // Unsent output of this reactor's connections, in bytes (any thread may read it).
  uint64_t output_bytes() const { return output_bytes_.load(std::memory_order_relaxed); }
  // Connections shed for ReactorOptions::max_output_bytes (any thread may read it).
  uint64_t shed_count() const { return shed_.load(std::memory_order_relaxed); }

  // Used by Connection.
  void MarkDirty(Connection* conn);
  void ScheduleWheel(Connection* conn, int64_t due_ms);
  void RequestClose(Connection* conn, bool abort);

  // Used by CoreMesh: the wake flag and the MSG_RING wake from another reactor.
  std::atomic<bool>& wake_pending() { return wake_pending_; }
  void WakeFrom(Reactor& source);

 private:
  enum Tag : uint64_t {
    kTagAccept = 1,
    kTagRecv = 2,
    kTagSend = 3,
    kTagTimer = 4,
    kTagWake = 5,
    kTagIgnore = 6,
    kTagShed = 7,  // a direct-descriptor refusal's accept (at most one pending; no payload)
  };
  // Direct descriptors for refusals: at most this many refused sockets in flight at once.
  static constexpr unsigned kShedSlots = 64;
  static constexpr uint64_t kTagMask = 7;

  io_uring_sqe* GetSqe();
  void ArmAccept();
  void ArmRecv(Connection* conn);
  void ArmTimer();
  void ArmEventfdRead();
  void HandleCqe(const io_uring_cqe* cqe);
  void OnAccept(int res, uint32_t flags);
  // Answers an accepted socket we will not serve with a short HTTP 503 and closes it.
  void Refuse(int fd, std::string_view why);
  // The same answer, then shuts the socket down but keeps its descriptor.
  void AnswerRefusal(int fd, std::string_view why);
  // Out of descriptors: refuses each waiting client (up to 64) with a 503. With direct
  // descriptors each is accepted into the ring's table (no process descriptor needed; see
  // ShedNextDirect). Otherwise the reserve descriptor is traded for each client in turn and
  // the last refused socket is kept as the new reserve; with several cores another core's
  // accept can take the freed slot first (docs/reliability.md).
  void ShedBacklog();
  // Accepts the next waiting client (if any, and budget is left) into a direct descriptor.
  // Its completion (OnShedAccepted) queues recv (what the client sent, so that the close sends
  // FIN, not RST), the 503, shutdown and close of that descriptor as one hard-linked chain, and
  // goes on with the next client.
  void ShedNextDirect();
  void OnShedAccepted(int res);
  void CountPeer(Connection* conn, int delta);
  static PeerKey ReadPeer(int fd);
  void OnRecv(Connection* conn, int res, uint32_t flags);
  void OnSend(Connection* conn, int res);
  void OnTimer();
  void Deliver(Connection* conn, char* data, size_t len);
  void StartSend(Connection* conn);
  void FlushDirty();
  // Brings output_bytes_ up to date with the connection's unsent output (0 once closed).
  void Account(Connection* conn);
  void SetAccounted(Connection* conn, size_t bytes);
  // Over max_output_bytes: sheds the connections holding the most until the rest fits.
  void ShedOutput();
  void CloseNow(Connection* conn);
  void MaybeFree(Connection* conn);
  void RecycleBuffer(uint16_t bid);
  void RunDeferred();

  int core_;
  ReactorOptions options_;
  CoreMesh* mesh_;
  ReactorFeatures features_;
  io_uring ring_{};
  bool ring_ready_ = false;

  // Provided receive buffers.
  io_uring_buf_ring* buf_ring_ = nullptr;
  char* buf_base_ = nullptr;
  size_t buf_region_bytes_ = 0;
  uint32_t buf_mask_ = 0;
  int buf_pending_returns_ = 0;
  std::vector<Connection*> starved_;  // multishot recv ended for lack of buffers

  // Accepting.
  int listen_fd_ = -1;
  AcceptHandlerFactory accept_factory_;
  bool accept_armed_ = false;
  int64_t accept_retry_at_ = 0;
  int reserve_fd_ = -1;  // /dev/null or a refused socket: EMFILE still leaves one to refuse with
  int shed_budget_ = 0;  // clients still to refuse in this round of direct refusals
  bool shed_accept_pending_ = false;
  std::string shed_answer_;  // the 503 sent by direct refusals (lives as long as the ring)
  char shed_sink_[2048];     // what refused clients sent, discarded
  absl::flat_hash_map<PeerKey, uint32_t> per_address_;
  std::atomic<uint64_t> refused_{0};  // read by /metrics on other cores

  // Connections.
  uint64_t next_conn_id_ = 1;
  size_t live_connections_ = 0;
  std::vector<Connection*> dirty_;
  friend class Connection;
  // Output buffers of finished sends, lent to connections that write again (Connection::out).
  std::vector<std::string> spare_out_;
  void LendOutputBuffer(std::string& out);
  void RecycleOutputBuffer(std::string& buf);
  std::vector<Connection*> all_;  // index = slot; nullptr = free (for shutdown and timers)
  std::vector<uint32_t> free_slots_;
  // Output accounting: a relaxed atomic written by this thread only (read by /metrics).
  std::atomic<uint64_t> output_bytes_{0};
  std::atomic<uint64_t> shed_{0};
  // Total at the last shedding pass: the next pass waits until the total grows past it (the
  // shed connections' bytes leave only as they are sent or cut off).
  uint64_t shed_pass_total_ = 0;
  int64_t shed_pass_ms_ = 0;
  absl::flat_hash_set<Connection*> zombies_;  // closed, waiting for their last completion

  // Timers: a hashed wheel of tick-sized buckets. A connection has at most one live entry
  // (Connection::wheel_due_); an entry that is not yet due when its bucket comes round is
  // re-inserted, so deadlines beyond the wheel's horizon work too.
  struct WheelEntry {
    uint32_t slot;
    uint64_t conn_id;
    int64_t due_ms;
  };
  static constexpr size_t kWheelBuckets = 256;
  std::vector<std::vector<WheelEntry>> wheel_{kWheelBuckets};
  int64_t wheel_tick_ = 0;  // last tick processed
  int64_t now_ms_ = 0;
  __kernel_timespec tick_ts_{};

  // Wake-ups.
  std::atomic<bool> wake_pending_{false};
  int event_fd_ = -1;
  uint64_t event_buf_ = 0;
  std::vector<std::function<void()>> pollers_;
  std::vector<Task> deferred_;

  // One-shot timers (RunAfter): a min-heap on due time.
  struct TimerTask {
    int64_t due_ms;
    uint64_t order;
    std::shared_ptr<Task> task;
    bool operator>(const TimerTask& o) const {
      return due_ms != o.due_ms ? due_ms > o.due_ms : order > o.order;
    }
  };
  std::vector<TimerTask> timers_;  // heap ordered by std::greater
  uint64_t timer_order_ = 0;
  std::vector<std::function<bool()>> drain_checks_;
  absl::flat_hash_map<Connection*, absl::AnyInvocable<void(DetachedSocket)>> detaching_;
  Connection* NewConnection(int fd, const PeerKey& peer);
  void FinishDetach(Connection* conn);

  // Shutdown.
  bool stopping_ = false;
  int64_t stop_deadline_ = 0;
};

}  // namespace parley::net
