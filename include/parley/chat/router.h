// Routing: who owns a logical shard, and the one way to hand work to that owner.
//
// Every user, conversation and group belongs to a logical shard (store::ShardOf). Each shard
// has exactly one owner, which alone sequences its writes. Today the owner is a core of this
// node (shard % cores); with multi-node it becomes "a core of the node the ring assigns the
// shard to", and only this class changes: callers say "run this on the owner of shard s" and
// never which core or node that is.
#pragma once

#include <string_view>

#include "parley/net/core_mesh.h"
#include "parley/net/reactor.h"
#include "parley/store/store.h"

namespace parley::chat {

class Router {
 public:
  Router(net::CoreMesh& mesh, int cores) : mesh_(mesh), cores_(cores) {}

  int cores() const { return cores_; }
  // The core that owns logical shard `shard` on this node.
  int CoreOfShard(int shard) const { return shard % cores_; }
  int CoreOfUser(std::string_view user) const { return CoreOfShard(store::ShardOf(user)); }
  int CoreOfConv(std::string_view conv) const { return CoreOfShard(store::ShardOf(conv)); }

  // Runs `task` on the owner of `shard`, from core `from` (the caller's core). Tasks from one
  // core to one owner run in submission order.
  void SubmitToShard(int from, int shard, net::Task task) {
    mesh_.SubmitTo(from, CoreOfShard(shard), std::move(task));
  }
  // Runs `task` on core `core` of this node (replies to a session on a known core).
  void SubmitToCore(int from, int core, net::Task task) {
    mesh_.SubmitTo(from, core, std::move(task));
  }

 private:
  net::CoreMesh& mesh_;
  int cores_;
};

}  // namespace parley::chat
