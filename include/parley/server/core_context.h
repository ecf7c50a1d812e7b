// What the protocol handlers on one core share: the configuration, the core's reactor and
// mesh, and per-core scratch space. One per reactor thread; never shared between cores.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <vector>

#include "parley/chat/engine_shard.h"
#include "parley/chat/router.h"
#include "parley/config/config.h"
#include "parley/net/core_mesh.h"
#include "parley/net/reactor.h"
#include "parley/server/metrics.h"

namespace parley::server {

struct CoreContext {
  const Config* config = nullptr;
  int core = 0;
  net::Reactor* reactor = nullptr;
  net::CoreMesh* mesh = nullptr;
  std::string node_name;
  CoreMetrics* metrics = nullptr;
  chat::EngineShard* engine = nullptr;  // this core's chat engine
  chat::Router* router = nullptr;
  // Every core's context, indexed by core (for hand-overs to another core).
  const std::vector<CoreContext*>* all = nullptr;
  // One JSON parser per core: its buffers are reused by every connection of the core.
  simdjson::ondemand::parser json_parser;
  std::string scratch;  // for building one frame at a time
};

}  // namespace parley::server
