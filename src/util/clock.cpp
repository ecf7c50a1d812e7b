#include "parley/util/clock.h"

#include <time.h>

namespace parley {

namespace {
int64_t ReadMillis(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}
}  // namespace

int64_t WallMillis() {
  return ReadMillis(CLOCK_REALTIME);
}
int64_t MonoMillis() {
  return ReadMillis(CLOCK_MONOTONIC);
}
int64_t MonoMicros() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace parley
