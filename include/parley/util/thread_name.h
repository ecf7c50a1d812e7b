// Thread names, as top -H, ps -L, perf and gdb show them. Linux keeps 15 characters.
#pragma once

#include <pthread.h>

#include <string>
#include <string_view>
#include <thread>

namespace parley {

inline void NameThread(std::thread& thread, std::string_view name) {
  const std::string truncated(name.substr(0, 15));
  pthread_setname_np(thread.native_handle(), truncated.c_str());
}

}  // namespace parley
