// Protocol codec costs on the hot path: decoding a request, encoding a delivered message.
// Each benchmark also reports heap allocations per operation ("allocs/op"): the decoder
// promises none on the success path for typical requests.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "parley/proto/frames.h"
#include "parley/proto/request.h"

namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

// The replacements below pair malloc with free, which GCC cannot see through once inlined.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}

namespace {

using namespace parley::proto;

const std::string kBody100(100, 'x');

// Runs `op` in the timed loop and reports allocations per iteration.
template <typename Op>
void Run(benchmark::State& state, Op op) {
  const uint64_t start = g_allocations.load(std::memory_order_relaxed);
  for (auto _ : state) op();
  const uint64_t allocations = g_allocations.load(std::memory_order_relaxed) - start;
  state.counters["allocs/op"] =
      benchmark::Counter(static_cast<double>(allocations), benchmark::Counter::kAvgIterations);
}

void BenchDecode(benchmark::State& state, const std::string& json) {
  simdjson::padded_string input(json);
  simdjson::ondemand::parser parser;
  Request req;
  DecodeError error;
  const DecodeLimits limits;
  // The first call sizes the parser's buffers; a connection's parser is reused the same way.
  if (!DecodeRequest(parser, input, limits, &req, &error)) {
    state.SkipWithError(error.message.c_str());
    return;
  }
  Run(state, [&] {
    bool ok = DecodeRequest(parser, input, limits, &req, &error);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(req);
  });
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * json.size()));
}

void BM_DecodeSend(benchmark::State& state) {
  BenchDecode(state,
              R"({"op":"send","id":2,"to":"bob","cmid":"c-81","body":")" + kBody100 + R"("})");
}
BENCHMARK(BM_DecodeSend);

void BM_DecodeSendWithMeta(benchmark::State& state) {
  BenchDecode(state, R"({"op":"send","id":2,"to":"bob","cmid":"c-81","body":")" + kBody100 +
                         R"(","meta":{"reply_to":16,"tags":["a","b"]}})");
}
BENCHMARK(BM_DecodeSendWithMeta);

void BM_DecodeSync(benchmark::State& state) {
  BenchDecode(state, R"({"op":"sync","id":3,"since":50,"limit":500})");
}
BENCHMARK(BM_DecodeSync);

void BM_DecodeWatch(benchmark::State& state) {
  BenchDecode(state, R"({"op":"watch","id":6,"users":["bob","carol","dave"]})");
}
BENCHMARK(BM_DecodeWatch);

void BM_AppendMsg(benchmark::State& state) {
  const MessageView msg{.conv = "d:alice:bob",
                        .seq = 17,
                        .from = "alice",
                        .cmid = "c-81",
                        .ts = 1764380000123,
                        .body = kBody100,
                        .meta_json = {}};
  std::string out;
  out.reserve(512);
  Run(state, [&] {
    out.clear();
    AppendMsg(&out, msg, 58);
    benchmark::DoNotOptimize(out.data());
  });
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * out.size()));
}
BENCHMARK(BM_AppendMsg);

}  // namespace
