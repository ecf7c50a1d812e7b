#include "parley/server/metrics.h"

#include "absl/strings/str_cat.h"

namespace parley::server {

namespace {
template <typename Field>
void Family(std::string* out, const std::vector<CoreMetrics*>& cores, const char* name,
            const char* type, const char* help, Field field) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  for (size_t i = 0; i < cores.size(); ++i) {
    absl::StrAppend(out, name, "{core=\"", i, "\"} ",
                    field(*cores[i]).load(std::memory_order_relaxed), "\n");
  }
}
}  // namespace

std::string RenderMetrics(const std::vector<CoreMetrics*>& cores) {
  std::string out;
  Family(
      &out, cores, "parley_connections", "gauge", "Open TCP connections.",
      [](CoreMetrics & m) -> auto& { return m.connections; });
  Family(
      &out, cores, "parley_websockets", "gauge", "Open WebSocket sessions.",
      [](CoreMetrics & m) -> auto& { return m.websockets; });
  Family(
      &out, cores, "parley_http_requests_total", "counter", "HTTP requests parsed.",
      [](CoreMetrics & m) -> auto& { return m.http_requests; });
  Family(
      &out, cores, "parley_ws_messages_received_total", "counter",
      "WebSocket data messages received.",
      [](CoreMetrics & m) -> auto& { return m.ws_messages_in; });
  Family(
      &out, cores, "parley_ws_messages_sent_total", "counter", "WebSocket data messages sent.",
      [](CoreMetrics & m) -> auto& { return m.ws_messages_out; });
  Family(
      &out, cores, "parley_ws_protocol_errors_total", "counter",
      "WebSocket connections failed for a protocol violation.",
      [](CoreMetrics & m) -> auto& { return m.ws_protocol_errors; });
  Family(
      &out, cores, "parley_slow_consumer_closes_total", "counter",
      "Connections closed with 4008 for too much unsent data.",
      [](CoreMetrics & m) -> auto& { return m.slow_consumer_closes; });
  return out;
}

}  // namespace parley::server
