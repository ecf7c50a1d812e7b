#include "parley/net/reactor.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "parley/net/core_mesh.h"
#include "parley/util/clock.h"
#include "parley/util/strings.h"

namespace parley::net {

namespace {
// How long a closing connection keeps reading (and discarding) after its FIN, so that the
// peer receives our last bytes (e.g. a close frame) before the socket is torn down.
constexpr int64_t kLingerMs = 2000;
// Back-off before re-arming accept after the process ran out of descriptors or memory.
constexpr int64_t kAcceptRetryMs = 100;
// Clients refused per round while the process is out of descriptors (the accept retry starts
// the next round).
constexpr int kRefusalsPerRound = 64;
constexpr std::string_view kOutOfDescriptors = "server out of file descriptors";

// The answer to a client refused before any HTTP is read: 503 with the reason as its body.
std::string RefusalText(std::string_view why) {
  return StrCat(
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Retry-After: 1\r\nConnection: close\r\nContent-Length: ",
      why.size() + 1, "\r\n\r\n", why, "\n");
}
}  // namespace

// ---- ConnectionHandler / Connection ----

void ConnectionHandler::OnShutdown(Connection& conn) {
  conn.CloseAfterFlush();
}
void ConnectionHandler::OnOutputBudget(Connection& conn) {
  conn.Abort();
}

std::string& Connection::out() {
  if (out_.empty() && out_.capacity() < Reactor::kMinSpareOut) reactor_->LendOutputBuffer(out_);
  return out_;
}

void Connection::Flush() {
  reactor_->MarkDirty(this);
}
void Connection::CloseAfterFlush() {
  reactor_->RequestClose(this, /*abort=*/false);
}
void Connection::Abort() {
  reactor_->RequestClose(this, /*abort=*/true);
}

void Connection::SetHandler(std::unique_ptr<ConnectionHandler> handler) {
  retired_handler_ = std::move(handler_);
  handler_ = std::move(handler);
  if (!in_callback_) retired_handler_.reset();
}

void Connection::SetDeadline(int64_t mono_ms) {
  deadline_ms_ = mono_ms;
  if (mono_ms != 0 && (wheel_due_ == 0 || mono_ms < wheel_due_)) {
    reactor_->ScheduleWheel(this, mono_ms);
  }
}

// ---- Reactor ----

Reactor::Reactor(int core, ReactorOptions options, CoreMesh* mesh)
    : core_(core), options_(options), mesh_(mesh) {}

Reactor::~Reactor() {
  if (ring_ready_) io_uring_queue_exit(&ring_);  // cancels every request still in flight
  for (Connection* conn : all_) {
    if (conn == nullptr) continue;
    if (!conn->closed_) ::close(conn->fd_);
    delete conn;
  }
  for (Connection* conn : zombies_) delete conn;
  if (buf_ring_ != nullptr) munmap(buf_ring_, buf_region_bytes_);
  if (event_fd_ >= 0) ::close(event_fd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (reserve_fd_ >= 0) ::close(reserve_fd_);
}

absl::Status Reactor::Init() {
  // Preferred set-up: one issuer, task work run only when we ask for completions. Fall back
  // step by step for older kernels.
  const unsigned cq_entries = options_.ring_entries * 4;
  const unsigned attempts[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      0,
  };
  int rc = -EINVAL;
  for (unsigned flags : attempts) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_CQSIZE;
    params.cq_entries = cq_entries;
    rc = io_uring_queue_init_params(options_.ring_entries, &ring_, &params);
    if (rc == 0) {
      features_.defer_taskrun = (flags & IORING_SETUP_DEFER_TASKRUN) != 0;
      break;
    }
  }
  if (rc != 0) return absl::InternalError(absl::StrCat("io_uring_queue_init: ", strerror(-rc)));
  ring_ready_ = true;
  features_.direct_refusals = io_uring_register_files_sparse(&ring_, kShedSlots) == 0;
  if (!features_.direct_refusals) reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);

  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
    features_.msg_ring = io_uring_opcode_supported(probe, IORING_OP_MSG_RING);
    io_uring_free_probe(probe);
  }

  // Provided buffer ring over our own mapping (liburing 2.3 has no io_uring_setup_buf_ring).
  uint32_t count = 1;
  while (count < options_.recv_buffer_count) count <<= 1;
  buf_mask_ = io_uring_buf_ring_mask(count);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t ring_bytes = (count * sizeof(io_uring_buf) + page - 1) / page * page;
  buf_region_bytes_ = ring_bytes + static_cast<size_t>(count) * options_.recv_buffer_size;
  void* mem =
      mmap(nullptr, buf_region_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (mem == MAP_FAILED) return absl::ResourceExhaustedError("mmap of receive buffers failed");
  buf_ring_ = static_cast<io_uring_buf_ring*>(mem);
  buf_base_ = static_cast<char*>(mem) + ring_bytes;
  io_uring_buf_ring_init(buf_ring_);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(mem);
  reg.ring_entries = count;
  reg.bgid = 0;
  rc = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (rc != 0) {
    return absl::UnimplementedError(absl::StrCat(
        "io_uring provided buffer rings are not supported by this kernel (needs Linux 5.19 or "
        "newer): ",
        strerror(-rc)));
  }
  for (uint32_t i = 0; i < count; ++i) {
    io_uring_buf_ring_add(buf_ring_, buf_base_ + static_cast<size_t>(i) * options_.recv_buffer_size,
                          options_.recv_buffer_size, static_cast<uint16_t>(i), buf_mask_,
                          static_cast<int>(i));
  }
  io_uring_buf_ring_advance(buf_ring_, static_cast<int>(count));

  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  now_ms_ = MonoMillis();
  wheel_tick_ = now_ms_ / options_.tick_ms;
  return absl::OkStatus();
}

io_uring_sqe* Reactor::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Reactor::Listen(int listen_fd, AcceptHandlerFactory factory) {
  listen_fd_ = listen_fd;
  accept_factory_ = std::move(factory);
  // Accepted sockets inherit TCP_NODELAY from their listener: one system call here instead of
  // one per connection.
  int one = 1;
  setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void Reactor::ArmAccept() {
  if (listen_fd_ < 0 || accept_armed_ || stopping_) return;
  io_uring_sqe* sqe = GetSqe();
  if (features_.multishot_accept) {
    io_uring_prep_multishot_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  } else {
    io_uring_prep_accept(sqe, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
  }
  io_uring_sqe_set_data64(sqe, kTagAccept);
  accept_armed_ = true;
}

void Reactor::ArmRecv(Connection* conn) {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_recv_multishot(sqe, conn->fd_, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = 0;
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(conn) | kTagRecv);
  conn->recv_armed_ = true;
  ++conn->ops_in_flight_;
}

void Reactor::ArmTimer() {
  tick_ts_.tv_sec = options_.tick_ms / 1000;
  tick_ts_.tv_nsec = (options_.tick_ms % 1000) * 1000000;
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  io_uring_sqe_set_data64(sqe, kTagTimer);
}

void Reactor::ArmEventfdRead() {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, event_fd_, &event_buf_, sizeof(event_buf_), 0);
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(&event_buf_) | kTagWake);
}

void Reactor::Notify() {
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof(one));
  }
}

void Reactor::WakeFrom(Reactor& source) {
  if (source.features_.msg_ring && source.ring_ready_) {
    // Posts a CQE straight into this ring; the sender's own completion is skipped.
    io_uring_sqe* sqe = source.GetSqe();
    io_uring_prep_msg_ring(sqe, ring_.ring_fd, 0, kTagWake, 0);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, kTagIgnore);
    return;
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof(one));
}

void Reactor::MarkDirty(Connection* conn) {
  Account(conn);
  if (conn->dirty_ || conn->closed_) return;
  conn->dirty_ = true;
  dirty_.push_back(conn);
}

void Reactor::RequestClose(Connection* conn, bool abort) {
  if (conn->closed_) return;
  Account(conn);
  if (abort) {
    conn->out_.clear();
    CloseNow(conn);
    return;
  }
  if (conn->closing_) return;
  conn->closing_ = true;
  if (!conn->send_in_flight_ && conn->out_.empty()) {
    StartSend(conn);  // nothing to send: goes straight to the lingering close
  } else {
    MarkDirty(conn);
  }
}

void Reactor::ScheduleWheel(Connection* conn, int64_t due_ms) {
  conn->wheel_due_ = due_ms;
  int64_t tick = due_ms / options_.tick_ms;
  if (tick <= wheel_tick_) tick = wheel_tick_ + 1;
  wheel_[static_cast<size_t>(tick) % kWheelBuckets].push_back({conn->slot_, conn->id_, due_ms});
}

void Reactor::Run() {
  ArmTimer();
  ArmEventfdRead();
  ArmAccept();
  while (true) {
    // Clear the wake flag before draining: a task queued after this point wakes us again.
    wake_pending_.store(false, std::memory_order_seq_cst);
    bool more = false;
    mesh_->Drain(core_, &more);
    for (auto& poller : pollers_) poller();
    RunDeferred();
    if (!accept_armed_ && listen_fd_ >= 0 && !stopping_ && now_ms_ >= accept_retry_at_) {
      if (shed_accept_pending_) {
        // A refusal's accept still waiting (its client went away before it was taken): the
        // normal accept takes over, with descriptors perhaps available again.
        io_uring_sqe* sqe = GetSqe();
        io_uring_prep_cancel64(sqe, kTagShed, 0);
        io_uring_sqe_set_data64(sqe, kTagIgnore);
        shed_budget_ = 0;
      }
      ArmAccept();
    }
    if (!starved_.empty()) {
      std::vector<Connection*> starved;
      starved.swap(starved_);
      for (Connection* conn : starved) {
        --conn->ops_in_flight_;  // the reference the starved list held
        if (!conn->closed_ && !conn->recv_armed_ && !conn->detaching_) ArmRecv(conn);
        MaybeFree(conn);
      }
    }
    FlushDirty();
    if (stopping_) {
      bool busy = live_connections_ != 0;
      for (auto& check : drain_checks_) busy = busy || check();
      if (!busy || now_ms_ >= stop_deadline_) break;
    }

    if (more || !deferred_.empty()) {
      io_uring_submit_and_get_events(&ring_);
    } else {
      io_uring_submit_and_wait(&ring_, 1);
    }
    now_ms_ = MonoMillis();
    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      HandleCqe(cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    if (buf_pending_returns_ != 0) {
      io_uring_buf_ring_advance(buf_ring_, buf_pending_returns_);
      buf_pending_returns_ = 0;
    }
  }
  // Whatever is left after the grace period is cut off.
  for (Connection* conn : all_) {
    if (conn != nullptr && !conn->closed_) CloseNow(conn);
  }
}

void Reactor::BeginShutdown(int64_t grace_ms) {
  if (stopping_) return;
  stopping_ = true;
  stop_deadline_ = now_ms_ + grace_ms;
  if (listen_fd_ >= 0) {
    if (accept_armed_) {
      io_uring_sqe* sqe = GetSqe();
      io_uring_prep_cancel64(sqe, kTagAccept, 0);
      io_uring_sqe_set_data64(sqe, kTagIgnore);
    }
    ::shutdown(listen_fd_, SHUT_RDWR);
  }
  for (size_t i = 0; i < all_.size(); ++i) {
    Connection* conn = all_[i];
    if (conn == nullptr || conn->closed_ || conn->closing_ || conn->detaching_) continue;
    conn->in_callback_ = true;
    conn->handler_->OnShutdown(*conn);
    conn->in_callback_ = false;
    conn->retired_handler_.reset();
    MaybeFree(conn);
  }
}

void Reactor::RunDeferred() {
  while (!deferred_.empty()) {
    std::vector<Task> tasks;
    tasks.swap(deferred_);
    for (auto& task : tasks) task();
  }
}

void Reactor::HandleCqe(const io_uring_cqe* cqe) {
  const uint64_t data = cqe->user_data;
  const uint64_t tag = data & kTagMask;
  switch (tag) {
    case kTagAccept:
      OnAccept(cqe->res, cqe->flags);
      break;
    case kTagRecv:
      OnRecv(reinterpret_cast<Connection*>(data & ~kTagMask), cqe->res, cqe->flags);
      break;
    case kTagSend:
      OnSend(reinterpret_cast<Connection*>(data & ~kTagMask), cqe->res);
      break;
    case kTagTimer:
      OnTimer();
      ArmTimer();
      break;
    case kTagWake:
      // A MSG_RING wake carries no pointer; the eventfd read does and must be re-armed.
      if ((data & ~kTagMask) != 0) ArmEventfdRead();
      break;
    case kTagShed:
      OnShedAccepted(cqe->res);
      break;
    default:
      break;
  }
}

void Reactor::OnAccept(int res, uint32_t flags) {
  if (!(flags & IORING_CQE_F_MORE)) accept_armed_ = false;
  if (res < 0) {
    if (res == -EINVAL && features_.multishot_accept && !stopping_) {
      // Kernels before 5.19 have no multishot accept: fall back to one accept at a time.
      features_.multishot_accept = false;
      return;  // re-armed at the top of the loop
    }
    if (res != -ECANCELED && res != -EINVAL) {
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: refuse what waits in the backlog (when out of
      // descriptors) and retry shortly instead of spinning.
      if (res == -EMFILE || res == -ENFILE) ShedBacklog();
      accept_armed_ = false;
      accept_retry_at_ = now_ms_ + kAcceptRetryMs;
    }
    return;
  }
  const int fd = res;
  if (stopping_) {
    ::close(fd);
    return;
  }
  if (live_connections_ >= options_.max_connections) {
    Refuse(fd, "too many connections (limits.max_connections)");
    return;
  }
  const PeerKey peer = ReadPeer(fd);
  if (options_.max_connections_per_address != 0) {
    auto it = per_address_.find(peer);
    if (it != per_address_.end() && it->second >= options_.max_connections_per_address) {
      Refuse(fd, "too many connections from this address (limits.max_connections_per_ip)");
      return;
    }
  }
  Connection* conn = NewConnection(fd, peer);
  conn->in_callback_ = true;
  conn->handler_ = accept_factory_(*conn);
  conn->in_callback_ = false;
  if (!conn->closed_) ArmRecv(conn);
  MaybeFree(conn);
}

void Reactor::Refuse(int fd, std::string_view why) {
  AnswerRefusal(fd, why);
  ::close(fd);
}

void Reactor::AnswerRefusal(int fd, std::string_view why) {
  refused_.fetch_add(1, std::memory_order_relaxed);
  // Best effort and never blocking: whatever the client sent is read first so that the close
  // sends FIN rather than RST and the client sees the answer.
  char sink[2048];
  while (::recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0) {
  }
  const std::string answer = RefusalText(why);
  [[maybe_unused]] ssize_t sent =
      ::send(fd, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
}

void Reactor::ShedBacklog() {
  // Like a full table but worse: the kernel cannot give us a descriptor at all. Each waiting
  // client gets a 503 instead of hanging in the backlog until its own timeout.
  if (listen_fd_ < 0) return;
  if (features_.direct_refusals) {
    shed_budget_ = kRefusalsPerRound;
    ShedNextDirect();
    return;
  }
  // Without direct descriptors, the reserve descriptor makes room for one accept at a time.
  // Another thread (a storage writer, RocksDB) may have taken the descriptor this reactor freed
  // last time: get the reserve back first, or there is nothing to refuse with.
  if (reserve_fd_ < 0) reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (reserve_fd_ < 0) return;
  for (int i = 0; i < kRefusalsPerRound; ++i) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 0) <= 0 || !(pfd.revents & POLLIN)) break;
    // The freed slot is free only until accept4 takes it again: the refused socket then
    // stays open (answered and shut down) as the new reserve. Closing it and reopening
    // /dev/null instead would leave the slot free just as the refused client reconnects, and
    // another core's accept could take it, leaving this core nothing to refuse with.
    ::close(reserve_fd_);
    reserve_fd_ = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (reserve_fd_ < 0) {
      reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      break;
    }
    AnswerRefusal(reserve_fd_, kOutOfDescriptors);
  }
}

void Reactor::ShedNextDirect() {
  if (shed_accept_pending_ || shed_budget_ <= 0 || stopping_ || listen_fd_ < 0) return;
  // Only a client already waiting: the listening socket is this core's own (SO_REUSEPORT), so
  // the accept below completes at once instead of waiting for the next client.
  pollfd pfd{listen_fd_, POLLIN, 0};
  if (::poll(&pfd, 1, 0) <= 0 || !(pfd.revents & POLLIN)) return;
  --shed_budget_;
  io_uring_sqe* sqe = GetSqe();
  // Direct descriptors cannot be close-on-exec (they are not in the process's table at all).
  // liburing encodes the index plus one: ALLOC - 1 asks the kernel for any free slot.
  io_uring_prep_accept_direct(sqe, listen_fd_, nullptr, nullptr, 0, IORING_FILE_INDEX_ALLOC - 1);
  io_uring_sqe_set_data64(sqe, kTagShed);
  shed_accept_pending_ = true;
}

void Reactor::OnShedAccepted(int res) {
  shed_accept_pending_ = false;
  // -ENFILE: every slot of the table holds a refusal still in flight; the accept retry later
  // starts another round.
  if (res < 0) return;
  const unsigned slot = static_cast<unsigned>(res);
  refused_.fetch_add(1, std::memory_order_relaxed);
  if (shed_answer_.empty()) shed_answer_ = RefusalText(kOutOfDescriptors);
  // The four steps go in one submission: a link chain must not be split by a full queue.
  if (io_uring_sq_space_left(&ring_) < 4) io_uring_submit(&ring_);
  // Hard links: each step runs even if the one before failed (nothing sent yet, peer gone),
  // so the descriptor is always closed.
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_recv(sqe, static_cast<int>(slot), shed_sink_, sizeof(shed_sink_), MSG_DONTWAIT);
  sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK;
  io_uring_sqe_set_data64(sqe, kTagIgnore);
  sqe = GetSqe();
  io_uring_prep_send(sqe, static_cast<int>(slot), shed_answer_.data(), shed_answer_.size(),
                     MSG_DONTWAIT | MSG_NOSIGNAL);
  sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK;
  io_uring_sqe_set_data64(sqe, kTagIgnore);
  sqe = GetSqe();
  io_uring_prep_shutdown(sqe, static_cast<int>(slot), SHUT_WR);
  sqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK;
  io_uring_sqe_set_data64(sqe, kTagIgnore);
  sqe = GetSqe();
  io_uring_prep_close_direct(sqe, slot);
  io_uring_sqe_set_data64(sqe, kTagIgnore);
  ShedNextDirect();
}

PeerKey Reactor::ReadPeer(int fd) {
  PeerKey key{};
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return key;
  if (addr.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&addr);
    key[10] = 0xFF;
    key[11] = 0xFF;
    std::memcpy(key.data() + 12, &v4->sin_addr, 4);
  } else if (addr.ss_family == AF_INET6) {
    std::memcpy(key.data(), &reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr, 16);
  }
  return key;
}

void Reactor::CountPeer(Connection* conn, int delta) {
  if (delta > 0) {
    ++per_address_[conn->peer_];
    return;
  }
  auto it = per_address_.find(conn->peer_);
  if (it == per_address_.end()) return;
  if (--it->second == 0) per_address_.erase(it);
}

Connection* Reactor::NewConnection(int fd, const PeerKey& peer) {
  auto* conn = new Connection(this, fd, (static_cast<uint64_t>(core_) << 56) | next_conn_id_++);
  conn->peer_ = peer;
  CountPeer(conn, +1);
  if (free_slots_.empty()) {
    conn->slot_ = static_cast<uint32_t>(all_.size());
    all_.push_back(conn);
  } else {
    conn->slot_ = free_slots_.back();
    free_slots_.pop_back();
    all_[conn->slot_] = conn;
  }
  ++live_connections_;
  return conn;
}

void Reactor::Detach(Connection* conn, absl::AnyInvocable<void(DetachedSocket)> done) {
  if (conn->closed_ || conn->detaching_) return;
  conn->detaching_ = true;
  conn->deadline_ms_ = 0;
  detaching_[conn] = std::move(done);
  if (conn->recv_armed_) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(conn) | kTagRecv, 0);
    io_uring_sqe_set_data64(sqe, kTagIgnore);
  }
  MaybeFree(conn);
}

void Reactor::FinishDetach(Connection* conn) {
  auto it = detaching_.find(conn);
  auto done = std::move(it->second);
  detaching_.erase(it);
  DetachedSocket socket;
  socket.fd = conn->fd_;
  socket.peer = conn->peer_;
  socket.input = std::move(conn->in_);
  socket.output = std::move(conn->out_);
  SetAccounted(conn, 0);  // the output is the adopting reactor's now
  all_[conn->slot_] = nullptr;
  free_slots_.push_back(conn->slot_);
  --live_connections_;
  CountPeer(conn, -1);
  delete conn;
  done(std::move(socket));
}

void Reactor::Adopt(DetachedSocket socket, const AcceptHandlerFactory& factory) {
  if (stopping_) {
    ::close(socket.fd);
    return;
  }
  Connection* conn = NewConnection(socket.fd, socket.peer);
  conn->out_ = std::move(socket.output);
  conn->in_callback_ = true;
  conn->handler_ = factory(*conn);
  conn->in_callback_ = false;
  if (!conn->out_.empty()) MarkDirty(conn);
  if (conn->closed_) {
    MaybeFree(conn);
    return;
  }
  ArmRecv(conn);
  if (!socket.input.empty()) Deliver(conn, socket.input.data(), socket.input.size());
  MaybeFree(conn);
}

void Reactor::RunAfter(int64_t delay_ms, Task task) {
  timers_.push_back({now_ms_ + delay_ms, timer_order_++, std::make_shared<Task>(std::move(task))});
  std::push_heap(timers_.begin(), timers_.end(), std::greater<>());
}

void Reactor::OnRecv(Connection* conn, int res, uint32_t flags) {
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    conn->recv_armed_ = false;
    --conn->ops_in_flight_;
  }
  if (res > 0) {
    const uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    char* data = buf_base_ + static_cast<size_t>(bid) * options_.recv_buffer_size;
    if (conn->detaching_) {
      conn->in_.append(data, static_cast<size_t>(res));  // travels with the socket
    } else if (conn->closing_ && !conn->closed_) {
      // Lingering after our FIN: discard.
    } else if (!conn->closed_) {
      Deliver(conn, data, static_cast<size_t>(res));
    }
    RecycleBuffer(bid);
    if (!more && !conn->closed_ && !conn->detaching_) ArmRecv(conn);
  } else if (res == -ENOBUFS) {
    // Every buffer of this core is in use; retry once some come back.
    if (!conn->closed_ && !more) {
      ++conn->ops_in_flight_;
      starved_.push_back(conn);
    }
  } else if (conn->detaching_ && res == -ECANCELED) {
    // Reading stopped for the hand-over.
  } else if (!conn->closed_) {
    // EOF, reset or cancellation. A socket in hand-over goes on: its new core sees the EOF.
    if (!conn->detaching_) CloseNow(conn);
  }
  MaybeFree(conn);
}

void Reactor::Deliver(Connection* conn, char* data, size_t len) {
  conn->in_callback_ = true;
  auto process = [conn](std::span<char> input) {
    size_t off = 0;
    while (off < input.size() && !conn->closing_ && !conn->closed_ && !conn->detaching_) {
      ConnectionHandler* handler = conn->handler_.get();
      off += handler->OnData(*conn, input.subspan(off));
      if (conn->handler_.get() == handler) break;  // same handler took what it could
    }
    return off;
  };
  if (conn->in_.empty()) {
    const size_t used = process(std::span<char>(data, len));
    if (used < len && !conn->closing_ && !conn->closed_) conn->in_.assign(data + used, len - used);
  } else {
    conn->in_.append(data, len);
    const size_t used = process(std::span<char>(conn->in_.data(), conn->in_.size()));
    if (conn->closing_ || conn->closed_ || used >= conn->in_.size()) {
      std::string().swap(conn->in_);
    } else {
      conn->in_.erase(0, used);
    }
  }
  conn->in_callback_ = false;
  conn->retired_handler_.reset();
}

void Reactor::RecycleBuffer(uint16_t bid) {
  io_uring_buf_ring_add(buf_ring_, buf_base_ + static_cast<size_t>(bid) * options_.recv_buffer_size,
                        options_.recv_buffer_size, bid, buf_mask_, buf_pending_returns_);
  ++buf_pending_returns_;
}

void Reactor::SetAccounted(Connection* conn, size_t bytes) {
  if (bytes == conn->accounted_output_) return;
  // Single writer: a load and a store, no read-modify-write on the hot path.
  output_bytes_.store(
      output_bytes_.load(std::memory_order_relaxed) + bytes - conn->accounted_output_,
      std::memory_order_relaxed);
  conn->accounted_output_ = bytes;
}

void Reactor::Account(Connection* conn) {
  SetAccounted(conn, conn->closed_ ? 0 : conn->PendingOutput());
}

void Reactor::ShedOutput() {
  const uint64_t budget = options_.max_output_bytes;
  const uint64_t total = output_bytes();
  // What an earlier pass shed is still on its way out: look again at once only if the total
  // grew past that pass, else once per tick.
  if (total <= shed_pass_total_ && now_ms_ < shed_pass_ms_ + options_.tick_ms) return;
  shed_pass_total_ = total;
  shed_pass_ms_ = now_ms_;
  // Connections already closing release their bytes by themselves (sent, or cut off at their
  // deadline); shedding others would not make that sooner.
  uint64_t remaining = total;
  std::vector<std::pair<size_t, Connection*>> candidates;
  for (Connection* conn : all_) {
    if (conn == nullptr || conn->closed_ || conn->accounted_output_ == 0) continue;
    if (conn->closing_) {
      remaining -= conn->accounted_output_;
    } else if (!conn->detaching_) {
      candidates.emplace_back(conn->accounted_output_, conn);
    }
  }
  std::sort(candidates.begin(), candidates.end(), std::greater<>());
  for (auto [bytes, conn] : candidates) {
    if (remaining <= budget) break;
    remaining -= bytes;
    shed_.fetch_add(1, std::memory_order_relaxed);
    const bool was_in_callback = conn->in_callback_;
    conn->in_callback_ = true;
    conn->handler_->OnOutputBudget(*conn);
    conn->in_callback_ = was_in_callback;
    if (!conn->closed_) {
      if (!conn->closing_) conn->CloseAfterFlush();
      conn->SetDeadline(now_ms_ + Connection::kShedLingerMs);
    }
    if (!was_in_callback) conn->retired_handler_.reset();
    MaybeFree(conn);
  }
}

void Reactor::FlushDirty() {
  if (options_.max_output_bytes != 0) {
    if (output_bytes() > options_.max_output_bytes) {
      ShedOutput();
    } else {
      shed_pass_total_ = 0;
    }
  }
  // Handlers may write to other connections while we flush; iterate by index.
  for (size_t i = 0; i < dirty_.size(); ++i) {
    Connection* conn = dirty_[i];
    conn->dirty_ = false;
    if (!conn->closed_ && !conn->send_in_flight_ && !conn->detaching_) StartSend(conn);
    MaybeFree(conn);
  }
  dirty_.clear();
}

void Reactor::LendOutputBuffer(std::string& out) {
  if (spare_out_.empty()) return;
  out.swap(spare_out_.back());
  spare_out_.pop_back();
}

void Reactor::RecycleOutputBuffer(std::string& buf) {
  if (buf.capacity() >= kMinSpareOut && buf.capacity() <= kMaxSpareOut &&
      spare_out_.size() < kMaxSpareOutCount) {
    buf.clear();
    spare_out_.push_back(std::move(buf));
  }
  std::string().swap(buf);
}

void Reactor::StartSend(Connection* conn) {
  if (conn->closed_) return;
  if (conn->out_.empty()) {
    if (conn->closing_) {
      // Everything is sent: half-close and keep reading briefly so the peer gets our last
      // bytes rather than a reset.
      ::shutdown(conn->fd_, SHUT_WR);
      if (conn->recv_armed_) {
        conn->SetDeadline(now_ms_ + kLingerMs);
      } else {
        CloseNow(conn);
      }
    }
    return;
  }
  conn->inflight_.swap(conn->out_);
  conn->out_.clear();
  conn->inflight_sent_ = 0;
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_send(sqe, conn->fd_, conn->inflight_.data(), conn->inflight_.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(conn) | kTagSend);
  conn->send_in_flight_ = true;
  ++conn->ops_in_flight_;
}

void Reactor::OnSend(Connection* conn, int res) {
  --conn->ops_in_flight_;
  conn->send_in_flight_ = false;
  if (conn->closed_) {
    MaybeFree(conn);
    return;
  }
  if (res < 0) {
    CloseNow(conn);  // EPIPE, ECONNRESET: the peer is gone
    MaybeFree(conn);
    return;
  }
  conn->inflight_sent_ += static_cast<size_t>(res);
  Account(conn);
  if (conn->inflight_sent_ < conn->inflight_.size()) {
    // Short send: finish this buffer first, so out_ always starts on a message boundary.
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_send(sqe, conn->fd_, conn->inflight_.data() + conn->inflight_sent_,
                       conn->inflight_.size() - conn->inflight_sent_, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(conn) | kTagSend);
    conn->send_in_flight_ = true;
    ++conn->ops_in_flight_;
    return;
  }
  // Idle connections keep no output buffer: it goes back to the reactor's spares.
  RecycleOutputBuffer(conn->inflight_);
  conn->inflight_sent_ = 0;
  if (conn->detaching_) {
    // The rest of the output travels with the socket.
  } else if (!conn->out_.empty() || conn->closing_) {
    StartSend(conn);
  } else {
    conn->in_callback_ = true;
    conn->handler_->OnDrained(*conn);
    conn->in_callback_ = false;
    conn->retired_handler_.reset();
  }
  MaybeFree(conn);
}

void Reactor::OnTimer() {
  while (!timers_.empty() && timers_.front().due_ms <= now_ms_) {
    std::pop_heap(timers_.begin(), timers_.end(), std::greater<>());
    std::shared_ptr<Task> task = std::move(timers_.back().task);
    timers_.pop_back();
    (*task)();
  }
  const int64_t current = now_ms_ / options_.tick_ms;
  int64_t from = wheel_tick_ + 1;
  if (current - from >= static_cast<int64_t>(kWheelBuckets)) {
    from = current - static_cast<int64_t>(kWheelBuckets) + 1;
  }
  wheel_tick_ = current;
  for (int64_t t = from; t <= current; ++t) {
    std::vector<WheelEntry> bucket;
    bucket.swap(wheel_[static_cast<size_t>(t) % kWheelBuckets]);
    for (const WheelEntry& entry : bucket) {
      if (entry.slot >= all_.size()) continue;
      Connection* conn = all_[entry.slot];
      if (conn == nullptr || conn->id_ != entry.conn_id || conn->wheel_due_ != entry.due_ms) {
        continue;  // stale: the connection is gone or was rescheduled
      }
      conn->wheel_due_ = 0;
      if (conn->deadline_ms_ == 0 || conn->closed_) continue;
      if (conn->deadline_ms_ > now_ms_) {
        ScheduleWheel(conn, conn->deadline_ms_);
        continue;
      }
      conn->deadline_ms_ = 0;
      if (conn->closing_) {
        CloseNow(conn);  // linger period over
      } else {
        conn->in_callback_ = true;
        conn->handler_->OnDeadline(*conn, now_ms_);
        conn->in_callback_ = false;
        conn->retired_handler_.reset();
      }
      MaybeFree(conn);
    }
    // Keep the bucket's capacity if nothing was re-inserted meanwhile.
    auto& slot = wheel_[static_cast<size_t>(t) % kWheelBuckets];
    if (slot.empty()) {
      bucket.clear();
      slot.swap(bucket);
    }
  }
}

void Reactor::CloseNow(Connection* conn) {
  if (conn->closed_) return;
  conn->closed_ = true;
  conn->closing_ = true;
  Account(conn);
  if (conn->recv_armed_) {
    io_uring_sqe* sqe = GetSqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(conn) | kTagRecv, 0);
    io_uring_sqe_set_data64(sqe, kTagIgnore);
  }
  ::close(conn->fd_);
  all_[conn->slot_] = nullptr;
  free_slots_.push_back(conn->slot_);
  zombies_.insert(conn);  // until its last completion arrives (MaybeFree)
  --live_connections_;
  CountPeer(conn, -1);
  const bool was_in_callback = conn->in_callback_;
  conn->in_callback_ = true;
  conn->handler_->OnClosed(*conn);
  conn->in_callback_ = was_in_callback;
}

void Reactor::MaybeFree(Connection* conn) {
  if (conn->detaching_ && conn->ops_in_flight_ == 0 && !conn->in_callback_ && !conn->dirty_) {
    FinishDetach(conn);
    return;
  }
  if (conn->closed_ && conn->ops_in_flight_ == 0 && !conn->in_callback_ && !conn->dirty_) {
    zombies_.erase(conn);
    delete conn;
  }
}

}  // namespace parley::net
