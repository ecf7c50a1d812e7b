// Figures read from /proc: the server's CPU time and memory (given its pid), the kernel's
// socket memory, and the machine's CPU use, so a run can say what it cost and how busy the
// shared box was.
#pragma once

#include <cstdint>
#include <string>

namespace parley::load {

struct ProcSample {
  bool ok = false;
  int64_t cpu_us = 0;  // utime + stime of all threads, /proc/PID/stat (10 ms ticks)
  int64_t rss_kb = 0;  // VmRSS, /proc/PID/status
  int64_t threads = 0;
  int64_t fds = -1;  // entries of /proc/PID/fd; -1 = not counted
};
// count_fds lists /proc/PID/fd, which makes the kernel allocate an inode and a dentry per
// descriptor (about 0.9 KiB each): not while kernel memory is being measured.
ProcSample SampleProcess(int pid, bool count_fds = false);

struct SystemSample {
  int64_t slab_kb = 0;        // /proc/meminfo Slab
  int64_t tcp_mem_pages = 0;  // /proc/net/sockstat "TCP: ... mem"
  int64_t tcp_inuse = 0;
  int64_t cpu_busy_ticks = 0;  // /proc/stat, all CPUs: everything but idle and iowait
  int64_t cpu_total_ticks = 0;
};
SystemSample SampleSystem();

// This process's own CPU time (user + system), µs.
int64_t SelfCpuUs();

// The descriptor limit of this process (RLIMIT_NOFILE soft limit).
int64_t OpenFileLimit();

}  // namespace parley::load
