// Clocks. Protocol times (`ts`, `last_seen`) are wall-clock milliseconds since the Unix epoch;
// timers and timeouts use the monotonic clock so that clock steps never fire them early.
#pragma once

#include <cstdint>

namespace parley {

// Milliseconds since the Unix epoch (CLOCK_REALTIME).
int64_t WallMillis();

// Milliseconds on CLOCK_MONOTONIC; only differences are meaningful.
int64_t MonoMillis();

// Microseconds on CLOCK_MONOTONIC, for measuring durations.
int64_t MonoMicros();

}  // namespace parley
