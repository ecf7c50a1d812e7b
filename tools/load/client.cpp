#include "client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "parley/ws/frame_codec.h"
#include "parley/ws/handshake.h"

namespace parley::load {

namespace {

constexpr size_t kReadBuffer = 256 * 1024;
constexpr size_t kMaxEvents = 1024;
constexpr size_t kMaxHead = 16 * 1024;
constexpr uint64_t kMaxFrame = 64ull << 20;

void Base64_16(const uint8_t in[16], char out[24]) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < 15; i += 3) {
    uint32_t v = (in[i] << 16) | (in[i + 1] << 8) | in[i + 2];
    out[o++] = kAlphabet[(v >> 18) & 63];
    out[o++] = kAlphabet[(v >> 12) & 63];
    out[o++] = kAlphabet[(v >> 6) & 63];
    out[o++] = kAlphabet[v & 63];
  }
  uint32_t v = in[15] << 16;
  out[o++] = kAlphabet[(v >> 18) & 63];
  out[o++] = kAlphabet[(v >> 12) & 63];
  out[o++] = '=';
  out[o++] = '=';
}

char Lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

// Case-insensitive search of a header name in an HTTP head; returns the trimmed value.
std::string_view HeaderValue(std::string_view head, std::string_view name_lower) {
  size_t pos = head.find("\r\n");
  while (pos != std::string_view::npos && pos + 2 < head.size()) {
    size_t start = pos + 2;
    size_t end = head.find("\r\n", start);
    if (end == std::string_view::npos) break;
    std::string_view line = head.substr(start, end - start);
    if (line.size() > name_lower.size() && line[name_lower.size()] == ':') {
      bool match = true;
      for (size_t i = 0; i < name_lower.size(); ++i) {
        if (Lower(line[i]) != name_lower[i]) {
          match = false;
          break;
        }
      }
      if (match) {
        std::string_view v = line.substr(name_lower.size() + 1);
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
        while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
        return v;
      }
    }
    pos = end;
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------- Conn

void Conn::MarkDirty() {
  if (!dirty_) {
    dirty_ = true;
    w_->dirty_.push_back(this);
  }
}

void Conn::AppendFrame(uint8_t opcode, std::string_view payload) {
  ws::AppendMaskedFrame(&out_, static_cast<ws::Opcode>(opcode), payload,
                        static_cast<uint32_t>(w_->rng_.Next()));
  ++w_->stats_.frames_out;
  last_tx_ns_ = w_->now_ns_;
  MarkDirty();
}

void Conn::SendText(std::string_view text) {
  if (state_ != State::kOpen) return;
  AppendFrame(0x1, text);
}

void Conn::SendPing() {
  if (state_ != State::kOpen) return;
  AppendFrame(0x9, {});
}

void Conn::Close(uint16_t code) {
  by_us_ = true;
  if (state_ == State::kOpen) {
    char payload[2] = {static_cast<char>(code >> 8), static_cast<char>(code & 0xFF)};
    AppendFrame(0x8, std::string_view(payload, 2));
    close_sent_ = true;
    state_ = State::kClosing;
    closing_since_ns_ = w_->now_ns_;
  } else if (state_ == State::kConnecting || state_ == State::kUpgrading) {
    Abort();
  }
}

void Conn::Abort() {
  by_us_ = true;
  Terminate("aborted", 0);
}

void Conn::Terminate(std::string_view what, int err) {
  if (state_ == State::kClosed) return;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  state_ = State::kClosed;
  info_.what = what;
  info_.sys_errno = err;
  info_.code = close_code_;
  info_.upgraded = upgraded_;
  info_.by_us = by_us_;
  w_->dead_.push_back(this);
}

size_t Conn::ParseUpgrade(char* data, size_t len) {
  std::string_view text(data, len);
  size_t end = text.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (len > kMaxHead) {
      ++w_->stats_.upgrade_errors;
      Terminate("upgrade", 0);
    }
    return 0;
  }
  std::string_view head = text.substr(0, end + 2);
  bool ok = head.starts_with("HTTP/1.1 101");
  if (ok) {
    std::string expect = ws::AcceptKey(std::string_view(key_.data(), key_.size()));
    ok = HeaderValue(head, "sec-websocket-accept") == expect;
  }
  if (!ok) {
    ++w_->stats_.upgrade_errors;
    Terminate("upgrade", 0);
    return len;
  }
  state_ = State::kOpen;
  upgraded_ = true;
  w_->handler_->OnOpen(*this);
  return end + 4;
}

size_t Conn::ParseFrames(char* data, size_t len) {
  size_t pos = 0;
  while (state_ == State::kOpen || state_ == State::kClosing) {
    ws::FrameHeader h;
    if (!ws::ParseFrameHeader(std::string_view(data + pos, len - pos), &h)) break;
    const bool fin = h.fin;
    const uint8_t op = h.opcode;
    if (h.rsv != 0 || h.masked || h.payload_len > kMaxFrame) {  // a server frame is unmasked
      ++w_->stats_.protocol_errors;
      Terminate("protocol", 0);
      return len;
    }
    const size_t plen = static_cast<size_t>(h.payload_len);
    if (len - pos - h.header_len < plen) break;
    std::string_view payload(data + pos + h.header_len, plen);
    pos += h.header_len + plen;
    ++w_->stats_.frames_in;
    switch (op) {
      case 0x0:  // continuation
        frag_.append(payload);
        if (fin) {
          if (frag_opcode_ == 0x1 && state_ == State::kOpen) w_->handler_->OnText(*this, frag_);
          frag_.clear();
        }
        break;
      case 0x1:
      case 0x2:
        if (!fin) {
          frag_opcode_ = op;
          frag_.assign(payload);
        } else if (op == 0x1 && state_ == State::kOpen) {
          w_->handler_->OnText(*this, payload);
        }
        break;
      case 0x8: {
        uint16_t code = 1005;
        if (payload.size() >= 2) {
          code = static_cast<uint16_t>((static_cast<uint8_t>(payload[0]) << 8) |
                                       static_cast<uint8_t>(payload[1]));
        }
        close_code_ = code;
        if (!close_sent_) {
          // Echo it; the server then closes the TCP connection.
          if (code == 1005) {
            AppendFrame(0x8, {});
          } else {
            char p[2] = {static_cast<char>(code >> 8), static_cast<char>(code & 0xFF)};
            AppendFrame(0x8, std::string_view(p, 2));
          }
          close_sent_ = true;
          ++w_->stats_.closed_by_server;
        }
        state_ = State::kClosing;
        closing_since_ns_ = w_->now_ns_;
        return len;  // nothing follows a close frame
      }
      case 0x9:
        if (state_ == State::kOpen) AppendFrame(0xA, payload);
        break;
      case 0xA:
        break;
      default:
        ++w_->stats_.protocol_errors;
        Terminate("protocol", 0);
        return len;
    }
  }
  return pos;
}

// ---------------------------------------------------------------- Worker

Worker::Worker(const ClientConfig& cfg, int index, int workers)
    : cfg_(cfg),
      index_(index),
      workers_(workers),
      rng_((0x1234567ull + static_cast<uint64_t>(index) * 0x9E3779B97F4A7C15ull) ^
           static_cast<uint64_t>(NowNs())),
      rbuf_(kReadBuffer),
      events_(kMaxEvents) {
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  now_ns_ = NowNs();
  next_sweep_ns_ = now_ns_ + 1'000'000'000;
}

Worker::~Worker() {
  for (auto& c : all_) {
    if (c->fd_ >= 0) ::close(c->fd_);
  }
  if (ep_ >= 0) ::close(ep_);
}

Conn* Worker::Connect(uint64_t tag) {
  Conn* c;
  if (!free_.empty()) {
    c = free_.back();
    free_.pop_back();
  } else {
    all_.push_back(std::make_unique<Conn>());
    c = all_.back().get();
  }
  c->w_ = this;
  c->tag = tag;
  c->started_ns = NowNs();
  c->state_ = Conn::State::kConnecting;
  c->dirty_ = false;
  c->close_sent_ = false;
  c->by_us_ = false;
  c->upgraded_ = false;
  c->close_code_ = 0;
  c->frag_opcode_ = 0;
  c->last_tx_ns_ = c->started_ns;
  c->closing_since_ns_ = 0;
  c->in_.clear();
  c->out_.clear();
  c->out_off_ = 0;
  c->frag_.clear();
  c->info_ = {};
  ++live_;
  ++stats_.connects;

  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ++stats_.connect_errors;
    c->Terminate("socket", errno);
    return c;
  }
  c->fd_ = fd;
  int one = 1;
  // The port is chosen at connect() time, per 4-tuple: each source address has its own
  // ephemeral port range instead of bind() reserving a port outright.
  ::setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const uint64_t k =
      connect_seq_++ * static_cast<uint64_t>(workers_) + static_cast<uint64_t>(index_);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  src.sin_addr.s_addr =
      htonl(0x7F000001u + static_cast<uint32_t>(k % static_cast<uint64_t>(cfg_.src_addrs)));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
    ++stats_.connect_errors;
    c->Terminate("bind", errno);
    return c;
  }
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(cfg_.port);
  dst.sin_addr.s_addr = htonl(cfg_.server_ip);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = c;
  if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    ++stats_.connect_errors;
    c->Terminate("epoll", errno);
    return c;
  }
  int r = ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst);
  if (r != 0 && errno != EINPROGRESS) {
    ++stats_.connect_errors;
    c->Terminate("connect", errno);
    return c;
  }
  // Completion (even an immediate one) is reported as EPOLLOUT.
  return c;
}

void Worker::OnConnected(Conn* c) {
  c->state_ = Conn::State::kUpgrading;
  uint8_t raw[16];
  for (int i = 0; i < 2; ++i) {
    uint64_t v = rng_.Next();
    std::memcpy(raw + 8 * i, &v, 8);
  }
  Base64_16(raw, c->key_.data());
  std::string& o = c->out_;
  o.append("GET ").append(cfg_.path).append(" HTTP/1.1\r\nHost: 127.0.0.1:");
  o.append(std::to_string(cfg_.port));
  o.append(
      "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
      "Sec-WebSocket-Protocol: parley.v1\r\nSec-WebSocket-Key: ");
  o.append(c->key_.data(), c->key_.size());
  o.append("\r\n\r\n");
  Flush(c);
}

void Worker::HandleEvents(Conn* c, uint32_t events) {
  if (c->state_ == Conn::State::kClosed) return;
  if (c->state_ == Conn::State::kConnecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(c->fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
      ++stats_.connect_errors;
      c->Terminate("connect", err ? err : ECONNREFUSED);
      return;
    }
    OnConnected(c);
    if (c->state_ == Conn::State::kClosed) return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    ReadAll(c, events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
    if (c->state_ == Conn::State::kClosed) return;
  }
  if ((events & EPOLLOUT) && c->pending_output() > 0) Flush(c);
}

void Worker::ReadAll(Conn* c, bool hangup) {
  for (;;) {
    ssize_t n = ::read(c->fd_, rbuf_.data(), rbuf_.size());
    if (n > 0) {
      stats_.bytes_in += static_cast<uint64_t>(n);
      auto process = [&](char* data, size_t len) -> size_t {
        size_t used = 0;
        if (c->state_ == Conn::State::kUpgrading) {
          used = c->ParseUpgrade(data, len);
          if (c->state_ != Conn::State::kOpen) return used;
        }
        return used + c->ParseFrames(data + used, len - used);
      };
      if (c->in_.empty()) {
        size_t used = process(rbuf_.data(), static_cast<size_t>(n));
        if (c->state_ == Conn::State::kClosed) return;
        if (used < static_cast<size_t>(n))
          c->in_.assign(rbuf_.data() + used, static_cast<size_t>(n) - used);
      } else {
        c->in_.append(rbuf_.data(), static_cast<size_t>(n));
        size_t used = process(c->in_.data(), c->in_.size());
        if (c->state_ == Conn::State::kClosed) return;
        c->in_.erase(0, used);
      }
      // A short read drained the socket and later data raises a new edge; but a FIN that
      // came with this edge would not raise another, so then read on to see the EOF.
      if (static_cast<size_t>(n) < rbuf_.size() && !hangup) return;
      continue;
    }
    if (n == 0) {
      if (c->state_ == Conn::State::kOpen && c->close_code_ == 0) ++stats_.resets;
      c->Terminate(c->close_code_ ? "closed" : "eof", 0);
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return;
    ++stats_.resets;
    c->Terminate("reset", errno);
    return;
  }
}

void Worker::Flush(Conn* c) {
  if (c->fd_ < 0 || c->state_ == Conn::State::kConnecting) return;
  while (c->out_off_ < c->out_.size()) {
    ssize_t n = ::send(c->fd_, c->out_.data() + c->out_off_, c->out_.size() - c->out_off_,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->out_off_ += static_cast<size_t>(n);
      stats_.bytes_out += static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    ++stats_.resets;
    c->Terminate("reset", n < 0 ? errno : EPIPE);
    return;
  }
  c->out_.clear();
  c->out_off_ = 0;
  if (c->out_.capacity() > (1u << 20)) c->out_.shrink_to_fit();
}

void Worker::FlushDirty() {
  for (size_t i = 0; i < dirty_.size(); ++i) {
    Conn* c = dirty_[i];
    c->dirty_ = false;
    if (c->state_ != Conn::State::kClosed) Flush(c);
  }
  dirty_.clear();
}

void Worker::Reap() {
  while (!dead_.empty()) {
    std::vector<Conn*> batch;
    batch.swap(dead_);
    for (Conn* c : batch) {
      handler_->OnClosed(*c, c->info_);
      --live_;
      c->in_.clear();
      c->in_.shrink_to_fit();
      c->out_.clear();
      c->out_.shrink_to_fit();
      c->frag_.clear();
      c->frag_.shrink_to_fit();
      free_.push_back(c);
    }
    FlushDirty();
  }
}

void Worker::Sweep() {
  for (auto& up : all_) {
    Conn* c = up.get();
    switch (c->state_) {
      case Conn::State::kOpen:
        if (now_ns_ - c->last_tx_ns_ >= cfg_.ping_interval_ns) c->SendPing();
        break;
      case Conn::State::kConnecting:
      case Conn::State::kUpgrading:
        if (now_ns_ - c->started_ns >= cfg_.close_timeout_ns * 2) {
          ++stats_.upgrade_errors;
          c->Terminate("timeout", ETIMEDOUT);
        }
        break;
      case Conn::State::kClosing:
        if (now_ns_ - c->closing_since_ns_ >= cfg_.close_timeout_ns)
          c->Terminate("close-timeout", 0);
        break;
      case Conn::State::kClosed:
        break;
    }
  }
}

void Worker::RunOnce(int64_t max_wait_ns) {
  now_ns_ = NowNs();
  handler_->OnTick(now_ns_);
  FlushDirty();
  Reap();
  int64_t due = std::min(handler_->NextDueNs(), next_sweep_ns_);
  int64_t wait = std::clamp<int64_t>(due - NowNs(), 0, max_wait_ns);
  timespec ts{static_cast<time_t>(wait / 1'000'000'000), static_cast<long>(wait % 1'000'000'000)};
  int n = ::epoll_pwait2(ep_, events_.data(), static_cast<int>(events_.size()), &ts, nullptr);
  now_ns_ = NowNs();
  for (int i = 0; i < n; ++i) {
    HandleEvents(static_cast<Conn*>(events_[i].data.ptr), events_[i].events);
  }
  FlushDirty();
  Reap();
  if (now_ns_ >= next_sweep_ns_) {
    Sweep();
    FlushDirty();
    Reap();
    next_sweep_ns_ = now_ns_ + 1'000'000'000;
  }
}

}  // namespace parley::load
