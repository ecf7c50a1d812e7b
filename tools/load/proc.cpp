#include "proc.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace parley::load {

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream f(path);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

// The value after "Key:" on its line, as an integer (the first number found).
int64_t FieldAfter(const std::string& text, const char* key) {
  size_t p = text.find(key);
  if (p == std::string::npos) return 0;
  p += std::strlen(key);
  while (p < text.size() && (text[p] < '0' || text[p] > '9')) {
    if (text[p] == '\n') return 0;
    ++p;
  }
  return std::strtoll(text.c_str() + p, nullptr, 10);
}

}  // namespace

ProcSample SampleProcess(int pid, bool count_fds) {
  ProcSample s;
  if (pid <= 0) return s;
  std::string stat, status;
  const std::string base = "/proc/" + std::to_string(pid);
  if (!ReadFile(base + "/stat", &stat) || !ReadFile(base + "/status", &status)) return s;
  // Fields after the command name (which may contain spaces) start at the last ')'.
  size_t rp = stat.rfind(')');
  if (rp == std::string::npos) return s;
  std::istringstream in(stat.substr(rp + 2));
  std::string field;
  // Field 3 (state) is the first here; utime and stime are fields 14 and 15.
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::atoll(field.c_str());
    if (i == 15) stime = std::atoll(field.c_str());
  }
  const long tck = sysconf(_SC_CLK_TCK);
  s.cpu_us = (utime + stime) * 1'000'000 / (tck > 0 ? tck : 100);
  s.rss_kb = FieldAfter(status, "VmRSS:");
  s.threads = FieldAfter(status, "Threads:");
  if (count_fds) {
    if (DIR* d = opendir((base + "/fd").c_str())) {
      s.fds = 0;
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') ++s.fds;
      }
      closedir(d);
    }
  }
  s.ok = true;
  return s;
}

SystemSample SampleSystem() {
  SystemSample s;
  std::string text;
  if (ReadFile("/proc/meminfo", &text)) s.slab_kb = FieldAfter(text, "\nSlab:");
  if (ReadFile("/proc/net/sockstat", &text)) {
    size_t p = text.find("TCP:");
    if (p != std::string::npos) {
      std::string line = text.substr(p, text.find('\n', p) - p);
      s.tcp_inuse = FieldAfter(line, "inuse ");
      s.tcp_mem_pages = FieldAfter(line, " mem ");
    }
  }
  if (ReadFile("/proc/stat", &text)) {
    std::istringstream in(text.substr(0, text.find('\n')));
    std::string cpu;
    in >> cpu;
    long long v[10] = {};
    for (int i = 0; i < 10 && in >> v[i]; ++i) {
    }
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is in user).
    long long total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    s.cpu_total_ticks = total;
    s.cpu_busy_ticks = total - v[3] - v[4];
  }
  return s;
}

int64_t SelfCpuUs() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1'000'000LL + ru.ru_utime.tv_usec +
         ru.ru_stime.tv_usec;
}

int64_t OpenFileLimit() {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  return rl.rlim_cur == RLIM_INFINITY ? (1 << 20) : static_cast<int64_t>(rl.rlim_cur);
}

}  // namespace parley::load
