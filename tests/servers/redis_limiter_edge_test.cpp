// RedisLimiter at the edges: a balance set between a take and its deposit, a deposit
// whose reply is lost (never run twice), and limits whose step is under a microsecond
// (a cost above the burst is never admitted).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_limiter.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/redis_limiter.hpp"
#include "catch.hpp"
#include "redis_test_client.hpp"
#include "server_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::Admission;
using apikeys::AdmissionOutcome;
using apikeys::AdmissionRequest;
using apikeys::RateLimit;
using apikeys::RedisLimiter;
using apikeys::RedisLimiterOptions;
using std::chrono::milliseconds;

namespace {

RedisLimiterOptions opts(const std::string& host, int port, const std::string& prefix,
                         std::uint64_t batch) {
  RedisLimiterOptions o;
  o.connection.host = host;
  o.connection.port = port;
  o.connection.prefix = prefix;
  o.connection.connect_timeout = milliseconds(500);
  o.connection.command_timeout = milliseconds(1000);
  o.connection.retry_interval = milliseconds(100);
  o.credit_batch = batch;
  return o;
}

AdmissionRequest req(const apikeys::Uuid& lineage, const std::vector<RateLimit>& limits,
                     bool credits, std::uint64_t cost = 1) {
  AdmissionRequest r;
  r.lineage_id = lineage;
  r.key_id = lineage;
  r.limits = limits.data();
  r.limit_count = limits.size();
  r.charge_credits = credits;
  r.cost = cost;
  r.now = std::chrono::system_clock::now();
  return r;
}

int spend(apikeys::Limiter& limiter, const apikeys::Uuid& lineage) {
  const std::vector<RateLimit> none;
  int n = 0;
  for (;;) {
    const Admission a = limiter.admit(req(lineage, none, true));
    if (a.outcome != AdmissionOutcome::admitted) return n;
    ++n;
  }
}

// Forwards the credit calls too, and runs `after_take` once right after a take.
class HookStore final : public apikeys_test::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::function<void()> after_take;

  apikeys::CreditTake take_credits(const apikeys::Uuid& l, std::uint64_t min, std::uint64_t max,
                                   apikeys::TimePoint now) override {
    auto t = inner().take_credits(l, min, max, now);
    if (after_take) {
      auto f = std::move(after_take);
      after_take = nullptr;
      f();
    }
    return t;
  }
  void return_credits(const apikeys::Uuid& l, std::uint64_t n, std::int64_t p) override {
    inner().return_credits(l, n, p);
  }
  std::optional<apikeys::KeyInfo> change_credits(const apikeys::Uuid& a, const apikeys::Uuid& k,
                                                 const apikeys::CreditsChange& c) override {
    return inner().change_credits(a, k, c);
  }
  std::optional<apikeys::StoreChanges> changes_since(std::uint64_t since) override {
    return inner().changes_since(since);
  }
};

RateLimit lim(const char* name, std::uint64_t n, milliseconds period, std::uint64_t burst) {
  RateLimit l;
  l.name = name;
  l.limit = n;
  l.period = period;
  l.burst = burst;
  return l;
}

// A TCP proxy to Redis. While `armed`, the next command a client sends is forwarded,
// Redis's reply is swallowed and the client's connection closed (as a server that
// executed the command and then died, or a proxy/failover that dropped the client).
class DroppingProxy {
 public:
  DroppingProxy(std::string host, int redis_port) : host_(std::move(host)), port_(redis_port) {
    lfd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    REQUIRE(::bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    ::getsockname(lfd_, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    REQUIRE(::listen(lfd_, 16) == 0);
    accept_ = std::thread([this] { accept_loop(); });
  }
  ~DroppingProxy() {
    stop_ = true;
    ::shutdown(lfd_, SHUT_RDWR);
    ::close(lfd_);
    accept_.join();
    for (auto& t : conns_) t.join();
  }
  int port = 0;
  std::atomic<bool> armed{false};
  std::atomic<int> dropped{0};

 private:
  void accept_loop() {
    for (;;) {
      const int c = ::accept(lfd_, nullptr, nullptr);
      if (c < 0) return;
      conns_.emplace_back([this, c] { relay(c); });
    }
  }
  void relay(int c) {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port_));
    ::inet_pton(AF_INET, host_ == "localhost" ? "127.0.0.1" : host_.c_str(), &a.sin_addr);
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(c);
      ::close(s);
      return;
    }
    char buf[65536];
    while (!stop_) {
      pollfd p[2]{{c, POLLIN, 0}, {s, POLLIN, 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      if (p[0].revents) {
        const ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        (void)!::write(s, buf, static_cast<std::size_t>(n));
        if (armed.exchange(false)) {
          // Wait for Redis to answer (so it executed the command), then drop the client.
          pollfd q{s, POLLIN, 0};
          ::poll(&q, 1, 2000);
          (void)!::read(s, buf, sizeof buf);
          ++dropped;
          break;
        }
      }
      if (p[1].revents) {
        const ssize_t n = ::read(s, buf, sizeof buf);
        if (n <= 0) break;
        (void)!::write(c, buf, static_cast<std::size_t>(n));
      }
    }
    ::close(c);
    ::close(s);
  }
  std::string host_;
  int port_;
  int lfd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread accept_;
  std::vector<std::thread> conns_;
};

void cleanup(const apikeys_test::RedisAddress& a, const std::string& prefix) {
  apikeys_test::RedisTestClient c(a);
  for (const auto& k : c.keys(prefix)) c.quiet({"DEL", k});
}

}  // namespace

TEST_CASE("RedisLimiter: credits taken before a balance set are never deposited after it",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rev") + ":";
  auto memory = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(memory);
  auto limiter = std::make_shared<RedisLimiter>(store, opts(redis->host, redis->port, prefix, 50));
  apikeys::KeyManagerOptions mo;
  mo.validation.limiter = limiter;
  apikeys::KeyManager manager(store, apikeys_test::hasher(), mo);
  apikeys::CreateRequest cr = apikeys_test::request("metered");
  apikeys::Credits c;
  c.remaining = 100;
  cr.credits = c;
  const auto key = manager.create(apikeys_test::account_id(7), cr).info;
  // An operator sets the balance to 10 while a request is between its take and its
  // deposit (another thread, another node: here, deterministically, inside the take).
  store->after_take = [&] { manager.set_credits(apikeys_test::account_id(7), key.key_id, 10); };
  const std::vector<RateLimit> none;
  const Admission in_flight = limiter->admit(req(key.key_id, none, true));
  CHECK(in_flight.outcome == AdmissionOutcome::admitted);
  // The balance set is 10: at most 10 more requests may be admitted (MemoryLimiter
  // drops what an in-flight request took from the replaced balance).
  const int after = spend(*limiter, key.key_id);
  CHECK(after <= 10);  // the 50 taken from the old balance are dropped, not deposited
  cleanup(*redis, prefix);
}

TEST_CASE("RedisLimiter: a deposit whose reply is lost is never run twice",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rev") + ":";
  DroppingProxy proxy(redis->host, redis->port);
  auto memory = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(memory);
  auto limiter = std::make_shared<RedisLimiter>(store, opts("127.0.0.1", proxy.port, prefix, 50));
  apikeys::KeyManager manager(store, apikeys_test::hasher());
  apikeys::CreateRequest cr = apikeys_test::request("metered");
  apikeys::Credits c;
  c.remaining = 100;
  cr.credits = c;
  const auto key = manager.create(apikeys_test::account_id(7), cr).info;
  // The next command after the take is the deposit, on the pooled connection the
  // admission script used: Redis runs it, the client loses the reply (EOF).
  store->after_take = [&] { proxy.armed = true; };
  const std::vector<RateLimit> none;
  int admitted = 0;
  try {
    if (limiter->admit(req(key.key_id, none, true)).outcome == AdmissionOutcome::admitted)
      ++admitted;
  } catch (const apikeys::Error&) {
  }
  CHECK(proxy.dropped.load() == 1);
  // The lost reply tripped the breaker (Redis looked unavailable): past its interval,
  // spend what is left.
  std::this_thread::sleep_for(milliseconds(200));
  admitted += spend(*limiter, key.key_id);
  CHECK(admitted <= 100);  // the deposit ran once: the failure loses credits, never adds
  cleanup(*redis, prefix);
}

TEST_CASE("RedisLimiter: a cost above the burst is refused, however short the step",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rev") + ":";
  RedisLimiter limiter(nullptr, opts(redis->host, redis->port, prefix, 50));
  apikeys::MemoryLimiter memory(nullptr);
  // 10^7 per second, burst 10: T = 0.1 us, tau = 1 us. A cost of 14 > burst.
  const std::vector<RateLimit> limits{lim("bulk", 10'000'000, milliseconds(1000), 10)};
  const Admission m = memory.admit(req(apikeys_test::account_id(3), limits, false, 14));
  CHECK(m.outcome == AdmissionOutcome::rate_limited);  // gcra.hpp: never admitted
  const Admission r = limiter.admit(req(apikeys_test::account_id(3), limits, false, 14));
  CHECK(r.outcome == AdmissionOutcome::rate_limited);
  CHECK(r.retry_after == std::chrono::milliseconds::max());
  // 10^9 per second, burst 1: a cost of 400 is admitted.
  const std::vector<RateLimit> fast{lim("fast", 1'000'000'000, milliseconds(1000), 1)};
  const Admission f = limiter.admit(req(apikeys_test::account_id(4), fast, false, 400));
  CHECK(f.outcome == AdmissionOutcome::rate_limited);
  // Two limits of one name would share one state: refused as a failure.
  const std::vector<RateLimit> twice{lim("dup", 1, milliseconds(60'000), 1),
                                     lim("dup", 100, milliseconds(60'000), 100)};
  CHECK_THROWS_AS(limiter.admit(req(apikeys_test::account_id(6), twice, false)), apikeys::Error);
  cleanup(*redis, prefix);
}
