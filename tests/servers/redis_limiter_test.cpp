// RedisLimiter against a real server (APIKEYS_TEST_REDIS): GCRA bursts and all or
// nothing across limits on Redis's clock; exact rate limits from two processes and
// exact credits from two limiters sharing one Redis and one store (two processes with a
// SqliteStore file once it keeps credits); what Redis holds (one hash per lineage, an
// expiry, the pool and its reset); faults: Redis down under both failure policies, a
// FLUSHALL and a restart mid-run never grant a credit twice, a balance set between a
// take and its deposit, a deposit whose reply is lost; limits whose step is under a
// microsecond. Skipped with a message when no server is configured (a failure under
// APIKEYS_REQUIRE_SERVERS=1).
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/redis_limiter.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/validation_code.hpp"
#include "apikeys/validator.hpp"
#include "catch.hpp"
#include "redis_test_client.hpp"
#include "server_support.hpp"
#include "store_doubles.hpp"
#include "temp_dir.hpp"
#include "test_support.hpp"

using apikeys::Admission;
using apikeys::AdmissionOutcome;
using apikeys::AdmissionRequest;
using apikeys::ErrorCode;
using apikeys::RateLimit;
using apikeys::RedisLimiter;
using apikeys::RedisLimiterOptions;
using apikeys::ValidationCode;
using std::chrono::milliseconds;

namespace {

using Client = apikeys_test::RedisTestClient;

constexpr milliseconds kDay{86'400'000};

RedisLimiterOptions options_for(const apikeys_test::RedisAddress& a, const std::string& prefix,
                                std::uint64_t batch = 100) {
  RedisLimiterOptions o;
  o.connection.host = a.host;
  o.connection.port = a.port;
  o.connection.prefix = prefix;
  o.connection.connect_timeout = milliseconds(250);
  o.connection.command_timeout = milliseconds(500);
  o.connection.retry_interval = milliseconds(100);
  o.credit_batch = batch;
  return o;
}

RateLimit limit(const char* name, std::uint64_t n, milliseconds period, std::uint64_t burst = 0) {
  RateLimit l;
  l.name = name;
  l.limit = n;
  l.period = period;
  l.burst = burst;
  return l;
}

AdmissionRequest request(const apikeys::Uuid& lineage, const std::vector<RateLimit>& limits,
                         bool credits = false, std::uint64_t cost = 1) {
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

std::string lineage_key(const std::string& prefix, const apikeys::Uuid& id) {
  std::string hex;
  for (const auto b : id.bytes()) {
    static const char* d = "0123456789abcdef";
    hex += d[b >> 4];
    hex += d[b & 15];
  }
  return prefix + "lim:{" + hex + "}";
}

// A lineage with `n` credits (no refill) in `store`; returns its id.
apikeys::Uuid with_credits(const std::shared_ptr<apikeys::Store>& store, std::uint64_t n) {
  apikeys::KeyManager manager(store, apikeys_test::hasher());
  apikeys::CreateRequest req = apikeys_test::request("metered");
  apikeys::Credits c;
  c.remaining = n;
  req.credits = c;
  return manager.create(apikeys_test::account_id(7), req).info.key_id;
}

std::uint64_t store_balance(apikeys::Store& store, const apikeys::Uuid& lineage) {
  const auto t = store.take_credits(lineage, 0, 0, std::chrono::system_clock::now());
  REQUIRE(t.outcome == apikeys::CreditTake::Outcome::taken);
  return t.remaining;
}

// Spends credits of cost 1 until refused; returns how many were admitted.
int spend_all(RedisLimiter& limiter, const apikeys::Uuid& lineage) {
  const std::vector<RateLimit> none;
  int admitted = 0;
  for (;;) {
    const Admission a = limiter.admit(request(lineage, none, true));
    if (a.outcome != AdmissionOutcome::admitted) {
      CHECK(a.outcome == AdmissionOutcome::usage_exceeded);
      return admitted;
    }
    ++admitted;
  }
}

// Runs `child` in a forked process; returns a function that waits for it and yields
// the int it wrote (or -1).
struct Child {
  pid_t pid = -1;
  int fd = -1;
  int wait() {
    int value = -1;
    if (::read(fd, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) value = -1;
    ::close(fd);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? value : -1;
  }
};

template <typename F>
Child fork_child(F body) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    int value = -1;
    int rc = 0;
    try {
      value = body();
    } catch (...) {
      rc = 1;
    }
    (void)!::write(p[1], &value, sizeof value);
    ::_exit(rc);
  }
  ::close(p[1]);
  return Child{pid, p[0]};
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

}  // namespace

TEST_CASE("RedisLimiter: options are checked, and a server that is down is busy",
          "[servers][redis][limiter]") {
  RedisLimiterOptions bad;
  bad.connection.host = "";
  CHECK_THROWS_AS(RedisLimiter(nullptr, bad), apikeys::Error);
  RedisLimiterOptions zero;
  zero.credit_batch = 0;
  CHECK_THROWS_AS(RedisLimiter(nullptr, zero), apikeys::Error);
  RedisLimiterOptions down;
  down.connection.host = "127.0.0.1";
  down.connection.port = 1;  // nothing listens there
  down.connection.connect_timeout = milliseconds(200);
  RedisLimiter limiter(nullptr, down);
  const std::vector<RateLimit> limits{limit("a", 10, milliseconds(1000))};
  try {
    (void)limiter.admit(request(apikeys_test::account_id(1), limits));
    FAIL("admit() answered without Redis");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
}

TEST_CASE("RedisLimiter: the server runs scripts by effects (Redis 5 or later)",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Client client(*redis);
  const std::string info = client.run({"INFO", "server"});
  const auto at = info.find("redis_version:");
  REQUIRE(at != std::string::npos);
  const int major = std::atoi(info.c_str() + at + 14);
  INFO(info.substr(at, 24));
  CHECK(major >= 5);
}

// As MemoryLimiter: retry_after is when every limit would admit the request, and the
// limit named is the one that makes it wait longest (never, for a cost above a burst).
TEST_CASE("RedisLimiter: retry_after is when every limit would admit the request",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  RedisLimiter limiter(nullptr, options_for(*redis, prefix));
  SECTION("a later limit that waits longer is the one named") {
    const apikeys::Uuid lineage = apikeys_test::account_id(12);
    // Twice a day (one every 12 hours) and once a day, a burst of 1 each.
    const std::vector<RateLimit> l{limit("a", 2, kDay, 1), limit("b", 1, kDay, 1)};
    REQUIRE(limiter.admit(request(lineage, l)).outcome == AdmissionOutcome::admitted);
    const Admission refused = limiter.admit(request(lineage, l));
    REQUIRE(refused.outcome == AdmissionOutcome::rate_limited);
    CHECK(refused.limited_by == 1);
    CHECK(refused.retry_after <= kDay);
    CHECK(refused.retry_after > kDay - milliseconds(60'000));
  }
  SECTION("a later limit whose burst is below the cost makes it never") {
    const apikeys::Uuid lineage = apikeys_test::account_id(13);
    const std::vector<RateLimit> l{limit("a", 3, kDay), limit("b", 100, kDay, 2)};
    for (int i = 0; i < 2; ++i) {
      REQUIRE(limiter.admit(request(lineage, l)).outcome == AdmissionOutcome::admitted);
    }
    // `a` (one left) alone would say 16 hours; `b` never admits a cost of 3.
    const Admission refused = limiter.admit(request(lineage, l, false, 3));
    REQUIRE(refused.outcome == AdmissionOutcome::rate_limited);
    CHECK(refused.limited_by == 1);
    CHECK(refused.retry_after == milliseconds::max());
  }
}

TEST_CASE("RedisLimiter: a burst, then refused with nothing consumed: all or nothing",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  RedisLimiter limiter(nullptr, options_for(*redis, prefix));
  const apikeys::Uuid lineage = apikeys_test::account_id(11);
  // A day-long period: the clock moving during the test changes no count.
  const std::vector<RateLimit> both{limit("a", 5, kDay), limit("b", 3, kDay)};
  for (std::uint64_t i = 0; i < 3; ++i) {
    const Admission a = limiter.admit(request(lineage, both));
    REQUIRE(a.outcome == AdmissionOutcome::admitted);
    REQUIRE(a.limits.size() == 2);
    CHECK(a.limits[0].remaining == 4 - i);
    CHECK(a.limits[1].remaining == 2 - i);
    CHECK(a.limits[1].reset <= kDay / 3 * (i + 1));
    CHECK(a.limits[1].reset > kDay / 3 * (i + 1) - milliseconds(60'000));
    CHECK_FALSE(a.credits_remaining);
  }
  const Admission refused = limiter.admit(request(lineage, both));
  CHECK(refused.outcome == AdmissionOutcome::rate_limited);
  CHECK(refused.limited_by == 1);
  CHECK(refused.retry_after <= kDay / 3);
  CHECK(refused.retry_after > kDay / 3 - milliseconds(60'000));
  // "a" did not move on the refusal: two more of it alone, then none.
  const std::vector<RateLimit> only_a{limit("a", 5, kDay)};
  CHECK(limiter.admit(request(lineage, only_a)).limits.at(0).remaining == 1);
  CHECK(limiter.admit(request(lineage, only_a)).limits.at(0).remaining == 0);
  CHECK(limiter.admit(request(lineage, only_a)).outcome == AdmissionOutcome::rate_limited);
  // Cost 0 is never refused and spends nothing.
  CHECK(limiter.admit(request(lineage, only_a, false, 0)).outcome == AdmissionOutcome::admitted);
  // A cost above the burst is refused at once.
  const apikeys::Uuid fresh = apikeys_test::account_id(12);
  CHECK(limiter.admit(request(fresh, only_a, false, 6)).outcome == AdmissionOutcome::rate_limited);
  CHECK(limiter.admit(request(fresh, only_a, false, 5)).outcome == AdmissionOutcome::admitted);

  // One hash for the lineage, with an expiry no later than twice what the limits need
  // (re-armed with slack: doc/redis-limiter.md).
  Client client(*redis);
  const std::string key = lineage_key(prefix, lineage);
  CHECK(client.run({"TYPE", key}) == "hash");
  const long long pttl = std::atoll(client.run({"PTTL", key}).c_str());
  CHECK(pttl > 0);
  CHECK(pttl <= 2 * kDay.count());
  client.run({"DEL", key, lineage_key(prefix, fresh)});
}

TEST_CASE("RedisLimiter: GCRA on Redis's clock: steady rate after the burst, retry_after holds",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  RedisLimiter limiter(nullptr, options_for(*redis, prefix));
  Client client(*redis);
  const apikeys::Uuid lineage = apikeys_test::account_id(13);
  const std::vector<RateLimit> limits{limit("steady", 20, milliseconds(1000), 4)};  // T = 50 ms
  const std::int64_t t0 = client.time_us();
  int admitted = 0;
  Admission last;
  while (client.time_us() - t0 < 600'000) {
    last = limiter.admit(request(lineage, limits));
    if (last.outcome == AdmissionOutcome::admitted) ++admitted;
  }
  const std::int64_t t1 = client.time_us();
  // At most the burst plus one per 50 ms of Redis time (the exact bound) ...
  CHECK(admitted <= 4 + static_cast<int>((t1 - t0) / 50'000) + 1);
  CHECK(admitted >= 4);
  // ... and a refusal's retry_after is honest: after it, one more is admitted.
  Admission refused = limiter.admit(request(lineage, limits));
  for (int i = 0; i < 100 && refused.outcome == AdmissionOutcome::admitted; ++i)
    refused = limiter.admit(request(lineage, limits));
  REQUIRE(refused.outcome == AdmissionOutcome::rate_limited);
  CHECK(refused.retry_after <= milliseconds(50));
  std::this_thread::sleep_for(refused.retry_after + milliseconds(1));
  CHECK(limiter.admit(request(lineage, limits)).outcome == AdmissionOutcome::admitted);
  client.run({"DEL", lineage_key(prefix, lineage)});
}

TEST_CASE("RedisLimiter: two processes sharing one Redis admit a limit exactly",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  const apikeys::Uuid lineage = apikeys_test::account_id(14);
  const auto node = [&] {
    // Each process its own limiter (and store, unused: no credits).
    RedisLimiter limiter(std::make_shared<apikeys::MemoryStore>(), options_for(*redis, prefix));
    const std::vector<RateLimit> limits{limit("shared", 150, kDay)};
    int admitted = 0;
    for (int i = 0; i < 200; ++i) {
      if (limiter.admit(request(lineage, limits)).outcome == AdmissionOutcome::admitted) ++admitted;
    }
    return admitted;
  };
  Child a = fork_child(node);
  Child b = fork_child(node);
  const int na = a.wait();
  const int nb = b.wait();
  REQUIRE(na >= 0);
  REQUIRE(nb >= 0);
  CHECK(na + nb == 150);
  Client(*redis).run({"DEL", lineage_key(prefix, lineage)});
}

TEST_CASE("RedisLimiter: credits are spent exactly by two limiters sharing Redis and a store",
          "[servers][redis][limiter][credits]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  auto store = std::make_shared<apikeys::MemoryStore>();
  const apikeys::Uuid lineage = with_credits(store, 537);
  RedisLimiter n1(store, options_for(*redis, prefix, 10));
  RedisLimiter n2(store, options_for(*redis, prefix, 7));
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] { admitted += spend_all(t % 2 ? n1 : n2, lineage); });
  }
  for (auto& t : threads) t.join();
  CHECK(admitted.load() == 537);
  CHECK(store_balance(*store, lineage) == 0);
  const std::vector<RateLimit> none;
  const Admission a = n1.admit(request(lineage, none, true));
  CHECK(a.outcome == AdmissionOutcome::usage_exceeded);
  CHECK(a.credits_remaining == std::optional<std::uint64_t>(0));
  Client(*redis).run({"DEL", lineage_key(prefix, lineage)});
}

TEST_CASE("RedisLimiter: a rate-limited request is never charged: the pool is reported",
          "[servers][redis][limiter][credits]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  auto store = std::make_shared<apikeys::MemoryStore>();
  const apikeys::Uuid lineage = with_credits(store, 1000);
  RedisLimiter limiter(store, options_for(*redis, prefix, 100));
  const std::vector<RateLimit> limits{limit("one", 1, kDay)};
  const Admission first = limiter.admit(request(lineage, limits, true));
  REQUIRE(first.outcome == AdmissionOutcome::admitted);
  CHECK(first.credits_remaining == std::optional<std::uint64_t>(999));  // pool 100 + store 899
  CHECK(store_balance(*store, lineage) == 899);
  const Admission second = limiter.admit(request(lineage, limits, true));
  CHECK(second.outcome == AdmissionOutcome::rate_limited);
  Client client(*redis);
  const std::string key = lineage_key(prefix, lineage);
  CHECK(client.run({"HGET", key, "pool"}) == "100");
  CHECK(client.run({"HGET", key, "store_remaining"}) == "899");
  // A cost above what Redis and the store hold together: usage_exceeded, nothing spent.
  const std::vector<RateLimit> none;
  const Admission big = limiter.admit(request(lineage, none, true, 1000));
  CHECK(big.outcome == AdmissionOutcome::usage_exceeded);
  CHECK(big.credits_remaining == std::optional<std::uint64_t>(999));
  CHECK(client.run({"HGET", key, "pool"}) == "100");
  // credits_reset drops the pool (those credits are gone, not returned).
  limiter.credits_reset(lineage);
  CHECK(client.run({"HGET", key, "pool"}).empty());
  CHECK(client.run({"HEXISTS", key, "pool_end"}) == "0");
  CHECK(client.run({"HEXISTS", key, "t:one"}) == "1");  // the rate limit is kept
  const Admission after = limiter.admit(request(lineage, none, true));
  CHECK(after.credits_remaining == std::optional<std::uint64_t>(898));
  // A pool whose period ended (pool_end passed on Redis's clock) counts as empty.
  client.run({"HSET", key, "pool_end", "1"});
  CHECK(limiter.admit(request(lineage, none, true)).credits_remaining ==
        std::optional<std::uint64_t>(797));
  // A script cache flush is recovered from (EVAL).
  client.run({"SCRIPT", "FLUSH"});
  CHECK(limiter.admit(request(lineage, none, true)).outcome == AdmissionOutcome::admitted);
  client.run({"DEL", key});
}

TEST_CASE("RedisLimiter: two processes spend a SqliteStore's credits exactly",
          "[servers][redis][limiter][credits]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  apikeys_test::TempDir dir("apikeys-rl");
  const std::string path = dir.file("keys.db");
  apikeys::Uuid lineage;
  {
    auto store = std::make_shared<apikeys::SqliteStore>(path);
    lineage = with_credits(store, 300);
  }
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  const auto node = [&] {
    RedisLimiter limiter(std::make_shared<apikeys::SqliteStore>(path),
                         options_for(*redis, prefix, 9));
    return spend_all(limiter, lineage);
  };
  Child a = fork_child(node);
  Child b = fork_child(node);
  const int na = a.wait();
  const int nb = b.wait();
  REQUIRE(na >= 0);
  REQUIRE(nb >= 0);
  CHECK(na + nb == 300);
  Client(*redis).run({"DEL", lineage_key(prefix, lineage)});
}

TEST_CASE("RedisLimiter: a FLUSHALL mid-run loses the pool, never grants a credit twice",
          "[servers][redis][limiter][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  auto store = std::make_shared<apikeys::MemoryStore>();
  const apikeys::Uuid lineage = with_credits(store, 100);
  RedisLimiter limiter(store, options_for(*redis, prefix, 30));
  const std::vector<RateLimit> none;
  for (int i = 0; i < 10; ++i)
    REQUIRE(limiter.admit(request(lineage, none, true)).outcome == AdmissionOutcome::admitted);
  // The first take moved 31 (the cost and a batch): 21 are in Redis now.
  Client client(*redis);
  CHECK(client.run({"HGET", lineage_key(prefix, lineage), "pool"}) == "21");
  client.run({"FLUSHALL"});
  const int rest = spend_all(limiter, lineage);
  CHECK(10 + rest == 100 - 21);
  CHECK(store_balance(*store, lineage) == 0);
}

TEST_CASE("RedisLimiter: a FLUSHALL puts a rate limit back at rest: one more burst, no more",
          "[servers][redis][limiter][faults]") {
  // The bound SECURITY.md gives for a flush (or a restart without persistence): every
  // limit starts from rest again, once.
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  RedisLimiter limiter(nullptr, options_for(*redis, prefix));
  const apikeys::Uuid lineage = apikeys_test::account_id(9);
  const std::vector<RateLimit> l{limit("per-day", 3, kDay)};
  const auto admitted = [&] {
    int n = 0;
    for (int i = 0; i < 10; ++i) {
      n += limiter.admit(request(lineage, l)).outcome == AdmissionOutcome::admitted;
    }
    return n;
  };
  CHECK(admitted() == 3);
  Client(*redis).run({"FLUSHALL"});
  CHECK(admitted() == 3);
  CHECK(admitted() == 0);
}

// Forwards the credit calls to `inner`, and stops Redis right after the first take: the
// deposit that follows finds no server.
class StopsRedisAfterTake final : public apikeys_test::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  apikeys::CreditTake take_credits(const apikeys::Uuid& lineage, std::uint64_t min,
                                   std::uint64_t max, apikeys::TimePoint now) override {
    const apikeys::CreditTake t = inner().take_credits(lineage, min, max, now);
    if (!stopped.exchange(true)) CHECK(apikeys_test::server_control("APIKEYS_TEST_REDIS_STOP"));
    return t;
  }
  void return_credits(const apikeys::Uuid& lineage, std::uint64_t n, std::int64_t period) override {
    inner().return_credits(lineage, n, period);
  }
  std::atomic<bool> stopped{false};
};

TEST_CASE("RedisLimiter: credits taken for a deposit that never left go back to the store",
          "[servers][redis][limiter][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis ||
      !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_STOP", "APIKEYS_TEST_REDIS_START"})) {
    return;
  }
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  auto memory = std::make_shared<apikeys::MemoryStore>();
  const apikeys::Uuid lineage = with_credits(memory, 100);
  auto store = std::make_shared<StopsRedisAfterTake>(memory);
  RedisLimiter limiter(store, options_for(*redis, prefix, 30));
  const std::vector<RateLimit> none;
  try {
    (void)limiter.admit(request(lineage, none, true));
    FAIL("admitted with Redis stopped before the deposit");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_START"));
  CHECK(store->stopped.load());
  // The deposit was never sent, so nothing can have been deposited: all 100 are back.
  CHECK(store_balance(*memory, lineage) == 100);
}

TEST_CASE("RedisLimiter: a Redis restart mid-run never grants a credit twice",
          "[servers][redis][limiter][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis || !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_RESTART"})) return;
  const std::string prefix = apikeys_test::unique_name("rl") + ":";
  auto store = std::make_shared<apikeys::MemoryStore>();
  const apikeys::Uuid lineage = with_credits(store, 500);
  RedisLimiter limiter(store, options_for(*redis, prefix, 25));
  std::atomic<bool> stop{false};
  std::atomic<int> admitted{0};
  std::atomic<int> failed{0};
  std::thread spender([&] {
    const std::vector<RateLimit> none;
    while (!stop.load()) {
      try {
        const Admission a = limiter.admit(request(lineage, none, true));
        if (a.outcome == AdmissionOutcome::admitted) ++admitted;
        if (a.outcome == AdmissionOutcome::usage_exceeded) break;
      } catch (const apikeys::Error& e) {
        CHECK(e.code() == ErrorCode::busy);
        ++failed;
      }
      std::this_thread::sleep_for(milliseconds(1));
    }
  });
  std::this_thread::sleep_for(milliseconds(100));
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESTART"));
  // Admissions resume after the restart.
  const int before = admitted.load();
  CHECK(apikeys_test::eventually([&] { return admitted.load() > before + 5; }));
  stop = true;
  spender.join();
  // Spend what is left: the total never exceeds the store's 500.
  const int rest = spend_all(limiter, lineage);
  CHECK(admitted.load() + rest <= 500);
  CHECK(store_balance(*store, lineage) == 0);
}

TEST_CASE("RedisLimiter: Redis down: the Validator denies, or allows without spending",
          "[servers][redis][limiter][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  for (const auto policy :
       {apikeys::LimiterFailurePolicy::deny, apikeys::LimiterFailurePolicy::allow}) {
    auto store = std::make_shared<apikeys::MemoryStore>();
    RedisLimiterOptions o = options_for(*redis, apikeys_test::unique_name("rl") + ":");
    o.connection.port = 1;  // Redis is not there
    apikeys::KeyManagerOptions mo;
    mo.validation.limiter = std::make_shared<RedisLimiter>(store, o);
    mo.validation.limiter_failure = policy;
    apikeys::KeyManager manager(store, apikeys_test::hasher(), mo);
    apikeys::CreateRequest req = apikeys_test::request("limited");
    req.rate_limits = {limit("a", 10, milliseconds(1000))};
    apikeys::Credits c;
    c.remaining = 5;
    req.credits = c;
    const auto key = manager.create(apikeys_test::account_id(9), req);
    const auto r = manager.validate(key.info.public_key, key.secret_key.reveal());
    CHECK(r.limiter_failed);
    CHECK(r.code == (policy == apikeys::LimiterFailurePolicy::deny ? ValidationCode::error
                                                                   : ValidationCode::valid));
    CHECK(manager.validator().limiter_failures() == 1);
    CHECK(store_balance(*store, key.info.key_id) == 5);
  }
}

TEST_CASE("RedisLimiter: credits taken before a balance set are never deposited after it",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("lim") + ":";
  auto store = std::make_shared<HookStore>(std::make_shared<apikeys::MemoryStore>());
  auto limiter = std::make_shared<RedisLimiter>(store, options_for(*redis, prefix, 50));
  apikeys::KeyManagerOptions mo;
  mo.validation.limiter = limiter;
  apikeys::KeyManager manager(store, apikeys_test::hasher(), mo);
  const apikeys::Uuid key = with_credits(store, 100);
  // The owner sets the balance to 10 while a request is between its take (51 of the
  // old 100) and its deposit.
  store->after_take = [&] { manager.set_credits(apikeys_test::account_id(7), key, 10); };
  const std::vector<RateLimit> none;
  CHECK(limiter->admit(request(key, none, true)).outcome == AdmissionOutcome::admitted);
  // What was taken from the old balance was dropped: the new 10 is all there is.
  CHECK(spend_all(*limiter, key) <= 10);
  Client(*redis).run({"DEL", lineage_key(prefix, key)});
}

TEST_CASE("RedisLimiter: a deposit whose reply is lost is never run twice",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("lim") + ":";
  DroppingProxy proxy(redis->host, redis->port);
  auto store = std::make_shared<HookStore>(std::make_shared<apikeys::MemoryStore>());
  const apikeys_test::RedisAddress through{"127.0.0.1", proxy.port};
  RedisLimiter limiter(store, options_for(through, prefix, 50));
  const apikeys::Uuid key = with_credits(store, 100);
  // The command after the take is the deposit: Redis runs it, and the limiter loses
  // the reply (the connection ends).
  store->after_take = [&] { proxy.armed = true; };
  const std::vector<RateLimit> none;
  int admitted = 0;
  try {
    admitted += limiter.admit(request(key, none, true)).outcome == AdmissionOutcome::admitted;
  } catch (const apikeys::Error&) {
  }
  CHECK(proxy.dropped.load() == 1);
  // The lost reply tripped the breaker (Redis looked unavailable): past its interval,
  // spend what is left. The deposit ran once: the failure may lose credits, never add.
  std::this_thread::sleep_for(milliseconds(200));
  admitted += spend_all(limiter, key);
  CHECK(admitted <= 100);
  Client(*redis).run({"DEL", lineage_key(prefix, key)});
}

TEST_CASE("RedisLimiter: a cost above the burst is refused, however short the step",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("lim") + ":";
  RedisLimiter limiter(nullptr, options_for(*redis, prefix));
  // 10^7 a second with a burst of 10 (a step of 0.1 us), and 10^9 with a burst of 1.
  for (const auto& [l, cost] :
       {std::pair{limit("bulk", 10'000'000, milliseconds(1000), 10), 14},
        std::pair{limit("fast", 1'000'000'000, milliseconds(1000), 1), 400}}) {
    CAPTURE(l.name);
    const std::vector<RateLimit> limits{l};
    const Admission a = limiter.admit(
        request(apikeys_test::account_id(3), limits, false, static_cast<std::uint64_t>(cost)));
    CHECK(a.outcome == AdmissionOutcome::rate_limited);
    CHECK(a.retry_after == milliseconds::max());
  }
  // Two limits of one name would share one state: refused as a failure.
  const std::vector<RateLimit> twice{limit("dup", 1, milliseconds(60'000)),
                                     limit("dup", 100, milliseconds(60'000))};
  CHECK_THROWS_AS(limiter.admit(request(apikeys_test::account_id(6), twice)), apikeys::Error);
  // A limit out of its ranges (a store of the caller's own) is one too, never divided by.
  const std::vector<RateLimit> zero{limit("zero", 0, milliseconds(60'000))};
  CHECK_THROWS_AS(limiter.admit(request(apikeys_test::account_id(6), zero)), apikeys::Error);
}

TEST_CASE("RedisLimiter: a lineage hash that expires before a deposit keeps the credits",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("lim") + ":";
  auto store = std::make_shared<HookStore>(std::make_shared<apikeys::MemoryStore>());
  RedisLimiter limiter(store, options_for(*redis, prefix, 50));
  const apikeys::Uuid key = with_credits(store, 100);
  // A reset long ago (no balance set since): its token is in the hash, which lives a
  // minute. That minute ends while a request's take is at the store: no token at the
  // deposit is an expired hash, not a reset, and the credits are deposited.
  limiter.credits_reset(key);
  Client client(*redis);
  store->after_take = [&] {
    client.run({"PEXPIRE", lineage_key(prefix, key), "1"});
    std::this_thread::sleep_for(milliseconds(20));  // gone by the deposit
  };
  const std::vector<RateLimit> none;
  int admitted = limiter.admit(request(key, none, true)).outcome == AdmissionOutcome::admitted;
  admitted += spend_all(limiter, key);
  CHECK(admitted == 100);
  client.run({"DEL", lineage_key(prefix, key)});
}

TEST_CASE("RedisLimiter: credits_reset reaches Redis while the breaker is open",
          "[servers][redis][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  const std::string prefix = apikeys_test::unique_name("lim") + ":";
  DroppingProxy proxy(redis->host, redis->port);
  auto store = std::make_shared<HookStore>(std::make_shared<apikeys::MemoryStore>());
  const apikeys_test::RedisAddress through{"127.0.0.1", proxy.port};
  auto limiter = std::make_shared<RedisLimiter>(store, options_for(through, prefix, 50));
  apikeys::KeyManagerOptions mo;
  mo.validation.limiter = limiter;
  apikeys::KeyManager manager(store, apikeys_test::hasher(), mo);
  const apikeys::Uuid key = with_credits(store, 100);
  const std::vector<RateLimit> none;
  // 51 taken: 1 spent, 50 in the pool. Then one lost reply trips the breaker.
  REQUIRE(limiter->admit(request(key, none, true)).outcome == AdmissionOutcome::admitted);
  proxy.armed = true;
  try {
    (void)limiter->admit(request(key, none, true));
  } catch (const apikeys::Error&) {
  }
  REQUIRE(proxy.dropped.load() == 1);
  // Redis is up; the owner sets the balance to 0 while the breaker is open.
  manager.set_credits(apikeys_test::account_id(7), key, 0);
  std::this_thread::sleep_for(milliseconds(200));
  CHECK(spend_all(*limiter, key) == 0);  // the pool of the old balance is gone
  Client(*redis).run({"DEL", lineage_key(prefix, key)});
}
