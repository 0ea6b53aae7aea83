// What RedisCache and RedisLimiter tell their observers (RedisCacheOptions::observers),
// against a real server (APIKEYS_TEST_REDIS): the breaker opening and closing while
// Redis hangs and answers again, the subscription lost and restored across a restart,
// connections the server dropped, a verdict that does not decode, a failed reset, a
// deposit that failed and credits that could not go back to the store; no event holds
// the password, whether Redis wants one or refuses it; an observer that throws changes
// nothing a call returns. Skipped with a message when no server is configured (a
// failure under APIKEYS_REQUIRE_SERVERS=1).
#include <hiredis/hiredis.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/redis_cache.hpp"
#include "apikeys/redis_limiter.hpp"
#include "cache_contract.hpp"
#include "catch.hpp"
#include "redis_test_client.hpp"
#include "server_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::Admission;
using apikeys::AdmissionOutcome;
using apikeys::AdmissionRequest;
using apikeys::BackgroundError;
using apikeys::Component;
using apikeys::ErrorCode;
using apikeys::RateLimit;
using apikeys::RedisCache;
using apikeys::RedisCacheOptions;
using apikeys::RedisLimiter;
using apikeys::RedisLimiterOptions;
using apikeys_test::cache_contract::digest_of;
using apikeys_test::cache_contract::fill;
using apikeys_test::cache_contract::pk;
using apikeys_test::cache_contract::same;
using apikeys_test::cache_contract::valid_verdict;
using std::chrono::milliseconds;

namespace {

using Client = apikeys_test::RedisTestClient;
using Janitor = apikeys_test::RedisJanitor;

// One on_error() call, copied.
struct Event {
  Component component = Component::store;
  std::string operation;
  std::string message;
  bool recovered = false;
};

// Keeps every on_error() call, from any thread.
class Recorder final : public apikeys::Observer {
 public:
  void on_error(const BackgroundError& e) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back({e.component, std::string(e.operation), std::string(e.message), e.recovered});
  }
  std::vector<Event> events() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  // The Component::redis events whose operation starts with `stem`, in order.
  std::vector<Event> redis(std::string_view stem) const {
    std::vector<Event> out;
    for (auto& e : events()) {
      if (e.component == Component::redis && e.operation.compare(0, stem.size(), stem) == 0)
        out.push_back(std::move(e));
    }
    return out;
  }
  std::size_t count(Component c) const {
    std::size_t n = 0;
    for (const auto& e : events()) n += e.component == c ? 1 : 0;
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Event> events_;  // Guarded by mu_.
};

// Throws from every hook.
class Thrower final : public apikeys::Observer {
 public:
  void on_validate(const apikeys::ValidateEvent&) override { throw std::runtime_error("observer"); }
  void on_error(const BackgroundError&) override { throw std::runtime_error("observer"); }
};

RedisCacheOptions cache_options(const apikeys_test::RedisAddress& a, const std::string& prefix,
                                std::vector<std::shared_ptr<apikeys::Observer>> observers) {
  RedisCacheOptions o;
  o.host = a.host;
  o.port = a.port;
  o.prefix = prefix;
  o.local_tier = true;
  o.connect_timeout = milliseconds(150);
  o.command_timeout = milliseconds(150);
  o.heartbeat_interval = milliseconds(150);
  o.retry_interval = milliseconds(200);
  o.observers = std::move(observers);
  return o;
}

RedisLimiterOptions limiter_options(const apikeys_test::RedisAddress& a, const std::string& prefix,
                                    std::vector<std::shared_ptr<apikeys::Observer>> observers) {
  RedisLimiterOptions o;
  o.connection = cache_options(a, prefix, std::move(observers));
  return o;
}

RateLimit hourly(std::uint64_t n) {
  RateLimit l;
  l.name = "h";
  l.limit = n;
  l.period = std::chrono::hours(1);
  return l;
}

AdmissionRequest admission(const apikeys::Uuid& lineage, const std::vector<RateLimit>& limits,
                           bool credits) {
  AdmissionRequest r;
  r.lineage_id = lineage;
  r.key_id = lineage;
  r.limits = limits.data();
  r.limit_count = limits.size();
  r.charge_credits = credits;
  r.cost = 1;
  r.now = std::chrono::system_clock::now();
  return r;
}

// A store whose credits are made up: take_credits() hands out `taken` credits due back
// by `period_end` (running `on_take` first), and return_credits() fails.
class FakeCredits final : public apikeys_test::ForwardingStore {
 public:
  FakeCredits() : ForwardingStore(std::make_shared<apikeys::MemoryStore>()) {}
  std::function<void()> on_take;
  apikeys::TimePoint period_end = apikeys::TimePoint::max();
  std::atomic<int> returns{0};

  apikeys::CreditTake take_credits(const apikeys::Uuid&, std::uint64_t, std::uint64_t max,
                                   apikeys::TimePoint) override {
    if (on_take) on_take();
    apikeys::CreditTake t;
    t.outcome = apikeys::CreditTake::Outcome::taken;
    t.taken = max;
    t.remaining = 1000;
    t.period = 7;
    t.period_end = period_end;
    return t;
  }
  void return_credits(const apikeys::Uuid&, std::uint64_t, std::int64_t) override {
    ++returns;
    throw apikeys::Error(ErrorCode::storage, "FakeCredits: the store is down");
  }
};

// Runs `get` until it answers (returns) or `limit` passes; true when it answered.
template <typename F>
bool answers(F get, milliseconds limit = milliseconds(10'000)) {
  return apikeys_test::eventually(
      [&] {
        try {
          get();
          return true;
        } catch (const apikeys::Error& e) {
          CHECK(e.code() == ErrorCode::busy);
          return false;
        }
      },
      limit);
}

}  // namespace

TEST_CASE("RedisCache and RedisLimiter: a null observer is invalid_argument",
          "[servers][redis][observer]") {
  RedisCacheOptions o;
  o.observers = {std::make_shared<Recorder>(), nullptr};
  try {
    RedisCache cache(o);
    FAIL("a null observer was accepted");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
  }
  RedisLimiterOptions l;
  l.connection.observers = {nullptr};
  try {
    RedisLimiter limiter(nullptr, l);
    FAIL("a null observer was accepted");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
  }
}

TEST_CASE("RedisCache: observers see the breaker open while Redis hangs, and close after",
          "[servers][redis][observer][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis ||
      !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_PAUSE", "APIKEYS_TEST_REDIS_RESUME"}))
    return;
  Janitor janitor{*redis, {}};
  auto recorder = std::make_shared<Recorder>();
  RedisCacheOptions o = cache_options(*redis, janitor.make(), {recorder});
  o.local_tier = false;  // every get asks Redis
  RedisCache cache(o);
  const auto v = valid_verdict(1);
  fill(cache, pk(1), digest_of(1), v, milliseconds(600'000));
  REQUIRE(cache.get(pk(1), digest_of(1)));
  CHECK(recorder->redis("breaker").empty());

  bool resumed = true;
  struct Resume {  // never leave the shared server stopped
    bool& resumed;
    ~Resume() {
      if (!resumed)
        (void)std::system(
            (std::string(std::getenv("APIKEYS_TEST_REDIS_RESUME")) + " >/dev/null 2>&1").c_str());
    }
  } resume{resumed};
  resumed = false;
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_PAUSE"));
  // A get times out and trips the breaker; more gets, some after the retry interval
  // (each of those times out and trips it again), make the same one outage.
  const auto until = std::chrono::steady_clock::now() + milliseconds(900);
  int failed = 0;
  while (std::chrono::steady_clock::now() < until) {
    try {
      (void)cache.get(pk(1), digest_of(1));
      FAIL("get answered while Redis hangs");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::busy);
      ++failed;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  CHECK(failed > 10);
  REQUIRE(recorder->redis("breaker").size() == 1);
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESUME"));
  resumed = true;
  std::optional<apikeys::Verdict> got;
  CHECK(answers([&] { got = cache.get(pk(1), digest_of(1)); }));
  REQUIRE(got);
  CHECK(same(*got, v));

  const auto breaker = recorder->redis("breaker");
  REQUIRE(breaker.size() == 2);
  CHECK(breaker[0].operation == "breaker_open");
  CHECK_FALSE(breaker[0].recovered);
  CHECK(breaker[0].message.find("RedisCache") != std::string::npos);
  CHECK(breaker[1].operation == "breaker_close");
  CHECK(breaker[1].recovered);
  CHECK(breaker[1].message.empty());
  // A healthy cache says nothing more.
  for (int i = 0; i < 5; ++i) CHECK(cache.get(pk(1), digest_of(1)));
  CHECK(recorder->redis("breaker").size() == 2);
}

TEST_CASE("RedisCache: observers see the subscription lost and restored across a restart",
          "[servers][redis][observer][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis || !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_RESTART"})) return;
  Janitor janitor{*redis, {}};
  auto recorder = std::make_shared<Recorder>();
  RedisCache cache(cache_options(*redis, janitor.make(), {recorder}));
  REQUIRE(apikeys_test::eventually([&] { return cache.local_tier_live(); }));
  CHECK(recorder->redis("subscription").empty());  // the first subscription is no event

  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESTART"));
  CHECK(apikeys_test::eventually([&] { return recorder->redis("subscription").size() >= 2; }));
  CHECK(cache.local_tier_live());
  const auto sub = recorder->redis("subscription");
  REQUIRE(sub.size() == 2);  // however many reconnects failed while it was down
  CHECK(sub[0].operation == "subscription_lost");
  CHECK_FALSE(sub[0].recovered);
  CHECK(sub[0].message.find("RedisCache") != std::string::npos);
  CHECK(sub[1].operation == "subscription_restored");
  CHECK(sub[1].recovered);
  CHECK(sub[1].message.empty());
}

// The suite's Redis has no password: this test gives it one for a while
// (CONFIG SET requirepass, undone on every way out), so AUTH is done for real. A
// cache and a limiter with the right password reconnect (and re-AUTH) after the server
// drops their connections; with a wrong one they are refused. No event quotes either.
TEST_CASE("RedisCache and RedisLimiter: no event holds the password",
          "[servers][redis][observer][credentials]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  const std::string password = "0bs3rv3d-pa55 'Zq%x'=K7v";
  const std::string wrong = "wr0ng-Hj2u-Pf8c";
  Client admin(*redis);
  struct NoPassword {  // never leave the shared server wanting one
    Client& admin;
    ~NoPassword() { admin.quiet({"CONFIG", "SET", "requirepass", ""}); }
  } no_password{admin};
  admin.run({"CONFIG", "SET", "requirepass", password});

  auto recorder = std::make_shared<Recorder>();
  {
    RedisCacheOptions o = cache_options(*redis, janitor.make(), {recorder});
    o.password = password;
    RedisCache cache(o);
    REQUIRE(apikeys_test::eventually([&] { return cache.local_tier_live(); }));
    fill(cache, pk(2), digest_of(2), valid_verdict(2), milliseconds(600'000));
    RedisLimiterOptions lo = limiter_options(*redis, janitor.make(), {recorder});
    lo.connection.password = password;
    RedisLimiter limiter(nullptr, lo);
    const std::vector<RateLimit> limits{hourly(100)};
    REQUIRE(limiter.admit(admission(apikeys_test::account_id(2), limits, false)).outcome ==
            AdmissionOutcome::admitted);

    admin.kill_clients("normal");
    admin.kill_clients("pubsub");
    // A digest the in-process tier does not hold: Redis is asked, on a fresh
    // connection, with AUTH again.
    CHECK_FALSE(cache.get(pk(2), digest_of(99)));
    CHECK(cache.get(pk(2), digest_of(2)));
    CHECK(limiter.admit(admission(apikeys_test::account_id(2), limits, false)).outcome ==
          AdmissionOutcome::admitted);
    CHECK(apikeys_test::eventually([&] { return recorder->redis("subscription").size() >= 2; }));
    CHECK(recorder->redis("reconnect").size() == 2);
  }
  {
    RedisCacheOptions o = cache_options(*redis, janitor.make(), {recorder});
    o.password = wrong;
    RedisCache cache(o);
    CHECK_THROWS_AS(cache.get(pk(3), digest_of(3)), apikeys::Error);
    CHECK_THROWS_AS(cache.erase(pk(3)), apikeys::Error);
    RedisLimiterOptions lo = limiter_options(*redis, janitor.make(), {recorder});
    lo.connection.password = wrong;
    RedisLimiter limiter(nullptr, lo);
    const std::vector<RateLimit> limits{hourly(100)};
    CHECK_THROWS_AS(limiter.admit(admission(apikeys_test::account_id(3), limits, false)),
                    apikeys::Error);
    limiter.credits_reset(apikeys_test::account_id(3));
    CHECK(apikeys_test::eventually([&] { return recorder->redis("subscription").size() >= 3; }));
  }
  CHECK(recorder->redis("breaker_open").size() == 2);  // the refused cache and limiter
  CHECK(recorder->redis("credits_reset").size() == 1);
  const auto events = recorder->events();
  CHECK(events.size() >= 8);
  bool auth_refused = false;
  for (const auto& e : events) {
    INFO("event: " << to_string(e.component) << " " << e.operation << ": " << e.message);
    CHECK(e.component == Component::redis);
    CHECK(apikeys_test::leaked_piece(e.message, password).empty());
    CHECK(apikeys_test::leaked_piece(e.message, wrong).empty());
    CHECK(apikeys_test::leaked_piece(e.operation, password).empty());
    auth_refused = auth_refused || e.message.find("AUTH refused") != std::string::npos;
  }
  CHECK(auth_refused);
}

TEST_CASE("RedisCache: a verdict that does not decode is a miss, and observers hear of it",
          "[servers][redis][observer]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  auto recorder = std::make_shared<Recorder>();
  const std::string prefix = janitor.make();
  RedisCacheOptions o = cache_options(*redis, prefix, {std::make_shared<Thrower>(), recorder});
  o.local_tier = false;
  RedisCache cache(o);
  fill(cache, pk(4), digest_of(4), valid_verdict(4), milliseconds(600'000));
  REQUIRE(cache.get(pk(4), digest_of(4)));
  Client client(*redis);
  for (const auto& k : client.keys(prefix + "v:")) {
    const std::string value = client.run({"GET", k});
    const auto colon = value.find(':');
    REQUIRE(colon != std::string::npos);
    client.run({"SET", k, value.substr(0, colon + 1) + "\x09not a verdict", "KEEPTTL"});
  }
  CHECK_FALSE(cache.get(pk(4), digest_of(4)));  // the observer that throws changes nothing
  const auto decode = recorder->redis("decode");
  REQUIRE(decode.size() == 1);
  CHECK_FALSE(decode[0].recovered);
  CHECK(decode[0].message.find("taken as a miss") != std::string::npos);
  CHECK(recorder->count(Component::observer) >= 1);  // the other one threw
}

// Gives the shared server's default user `rule` back ("+mget") when it dies.
struct AclRestore {
  Client& c;
  const char* rule;
  ~AclRestore() { c.quiet({"ACL", "SETUSER", "default", rule}); }
};

TEST_CASE("RedisCache: a Redis that refuses MGET is read through the get script",
          "[servers][redis][observer]") {
  // An ACL that lets the cache's user run scripts but not MGET.
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  Client client(*redis);
  const AclRestore restore{client, "+mget"};  // never leave the server refusing MGET
  auto recorder = std::make_shared<Recorder>();
  RedisCacheOptions o = cache_options(*redis, janitor.make(), {recorder});
  o.local_tier = false;
  RedisCache cache(o);
  fill(cache, pk(5), digest_of(5), valid_verdict(5), milliseconds(600'000));
  REQUIRE(cache.get(pk(5), digest_of(5)));  // the epoch is known: the next get tries MGET
  client.run({"ACL", "SETUSER", "default", "-mget"});
  for (int i = 0; i < 3; ++i) {
    const auto v = cache.get(pk(5), digest_of(5));
    REQUIRE(v);
    CHECK(v->key_id == valid_verdict(5).key_id);
    CHECK_FALSE(cache.get(pk(5), digest_of(6)));
  }
  const auto refused = recorder->redis("mget_refused");
  CHECK(refused.size() == 1);                 // tried once, then never again
  CHECK(recorder->redis("breaker").empty());  // Redis answered: not an outage
}

TEST_CASE("RedisCache: a Redis that hides its run_id is used unchecked, and says so once",
          "[servers][redis][observer]") {
  // An ACL without INFO: the cache cannot tell a restarted server (doc/redis-cache.md,
  // invariant 9), works on, and tells the observers once.
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  Client client(*redis);
  const AclRestore restore{client, "+info"};  // never leave the server refusing INFO
  client.run({"ACL", "SETUSER", "default", "-info"});
  auto recorder = std::make_shared<Recorder>();
  RedisCacheOptions o = cache_options(*redis, janitor.make(), {recorder});
  o.local_tier = false;
  o.pool_size = 2;
  RedisCache cache(o);
  fill(cache, pk(7), digest_of(7), valid_verdict(7), milliseconds(600'000));
  REQUIRE(cache.get(pk(7), digest_of(7)));
  REQUIRE(apikeys_test::eventually([&] { return !recorder->redis("server_unchecked").empty(); }));
  // A second connection finds the same: no second event.
  std::thread other([&] { (void)cache.get(pk(7), digest_of(7)); });
  (void)cache.get(pk(7), digest_of(7));
  other.join();
  std::this_thread::sleep_for(milliseconds(300));  // a heartbeat or more
  const auto unchecked = recorder->redis("server_unchecked");
  CHECK(unchecked.size() == 1);
  CHECK_FALSE(unchecked[0].recovered);
  CHECK(unchecked[0].message.find("run_id") != std::string::npos);
  CHECK(recorder->redis("breaker").empty());
}

// Every event here reaches an observer that throws first: calls answer as they would
// without it, and the subscriber thread carries on.
TEST_CASE("RedisCache and RedisLimiter: a throwing observer never changes what a call returns",
          "[servers][redis][observer]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  auto recorder = std::make_shared<Recorder>();
  const std::vector<std::shared_ptr<apikeys::Observer>> observers{std::make_shared<Thrower>(),
                                                                  recorder};
  RedisCache cache(cache_options(*redis, janitor.make(), observers));
  RedisLimiter limiter(nullptr, limiter_options(*redis, janitor.make(), observers));
  REQUIRE(apikeys_test::eventually([&] { return cache.local_tier_live(); }));
  const auto v = valid_verdict(5);
  fill(cache, pk(5), digest_of(5), v, milliseconds(600'000));
  const apikeys::Uuid lineage = apikeys_test::account_id(5);
  const std::vector<RateLimit> limits{hourly(100)};
  Admission a = limiter.admit(admission(lineage, limits, false));
  REQUIRE(a.outcome == AdmissionOutcome::admitted);
  CHECK(a.limits.at(0).remaining == 99);

  Client admin(*redis);
  admin.kill_clients("normal");
  admin.kill_clients("pubsub");
  // Each call meets a connection the server closed: "reconnect", and the thrower throws.
  fill(cache, pk(6), digest_of(6), valid_verdict(6), milliseconds(600'000));
  a = limiter.admit(admission(lineage, limits, false));
  CHECK(a.outcome == AdmissionOutcome::admitted);
  CHECK(a.limits.at(0).remaining == 98);
  CHECK(recorder->redis("reconnect").size() == 2);
  // The subscriber heard its events through the thrower too, and is back.
  CHECK(apikeys_test::eventually([&] { return recorder->redis("subscription").size() == 2; }));
  CHECK(apikeys_test::eventually([&] { return cache.local_tier_live(); }));
  const auto got = cache.get(pk(5), digest_of(5));
  REQUIRE(got);
  CHECK(same(*got, v));
  const auto got6 = cache.get(pk(6), digest_of(6));
  REQUIRE(got6);
  CHECK(same(*got6, valid_verdict(6)));
  CHECK(recorder->count(Component::observer) >= 4);  // the thrower threw each time
}

TEST_CASE("RedisLimiter: observers hear of credits that could not go back to the store",
          "[servers][redis][observer][limiter]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  auto recorder = std::make_shared<Recorder>();
  auto store = std::make_shared<FakeCredits>();
  // Due back an hour ago: Redis's clock is past it, so nothing is deposited and the
  // credits go back to the store, which fails.
  store->period_end = std::chrono::system_clock::now() - std::chrono::hours(1);
  RedisLimiter limiter(
      store, limiter_options(*redis, janitor.make(), {std::make_shared<Thrower>(), recorder}));
  const std::vector<RateLimit> none;
  try {
    (void)limiter.admit(admission(apikeys_test::account_id(8), none, true));
    FAIL("admit answered with credits due back in the past");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);  // as without observers
  }
  CHECK(store->returns.load() == 1);
  const auto back = recorder->redis("return_credits");
  REQUIRE(back.size() == 1);
  CHECK(back[0].message.find("could not be returned") != std::string::npos);
  CHECK(back[0].message.find("the store is down") != std::string::npos);
}

TEST_CASE("RedisLimiter: observers hear of credits taken and then not deposited",
          "[servers][redis][observer][limiter][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis ||
      !apikeys_test::have_controls({"APIKEYS_TEST_REDIS_PAUSE", "APIKEYS_TEST_REDIS_RESUME"}))
    return;
  Janitor janitor{*redis, {}};
  auto recorder = std::make_shared<Recorder>();
  auto store = std::make_shared<FakeCredits>();
  bool resumed = true;
  struct Resume {
    bool& resumed;
    ~Resume() {
      if (!resumed)
        (void)std::system(
            (std::string(std::getenv("APIKEYS_TEST_REDIS_RESUME")) + " >/dev/null 2>&1").c_str());
    }
  } resume{resumed};
  // Redis stops answering between the take and the deposit.
  store->on_take = [&] {
    resumed = false;
    REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_PAUSE"));
  };
  RedisLimiter limiter(store, limiter_options(*redis, janitor.make(), {recorder}));
  const std::vector<RateLimit> none;
  try {
    (void)limiter.admit(admission(apikeys_test::account_id(9), none, true));
    FAIL("admit answered while Redis hangs");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_REDIS_RESUME"));
  resumed = true;
  const auto deposit = recorder->redis("deposit");
  REQUIRE(deposit.size() == 1);
  CHECK(deposit[0].message.find("101 credits taken from the store may be lost") !=
        std::string::npos);
  CHECK(recorder->redis("breaker_open").size() == 1);
  CHECK(store->returns.load() == 0);  // never given back: Redis may hold them
}

// An observer that uses the cache when the breaker closes: the call that reports it must
// not still hold a pooled connection, or (here, a pool of one) the observer's own get
// waits command_timeout for it and fails.
TEST_CASE("RedisCache: an observer may use the cache from breaker_close",
          "[servers][redis][observer][faults]") {
  const auto redis = apikeys_test::test_redis();
  if (!redis) return;
  Janitor janitor{*redis, {}};
  class Reentrant : public apikeys::Observer {
   public:
    RedisCache* cache = nullptr;
    std::atomic<int> closes{0};
    std::atomic<bool> nested_ok{false};
    void on_error(const apikeys::BackgroundError& e) override {
      if (e.operation != "breaker_close") return;
      ++closes;
      try {
        (void)cache->get(pk(3), digest_of(3));
        nested_ok = true;
      } catch (...) {
      }
    }
  };
  auto obs = std::make_shared<Reentrant>();
  RedisCacheOptions o = cache_options(*redis, janitor.make(), {obs});
  o.pool_size = 1;
  o.local_tier = false;
  RedisCache cache(std::move(o));
  obs->cache = &cache;
  CHECK_FALSE(cache.get(pk(3), digest_of(3)));
  {
    Client admin(*redis);
    (void)admin.run({"CLIENT", "PAUSE", "400"});  // every command hangs for 400 ms
  }
  CHECK_THROWS(cache.get(pk(3), digest_of(3)));    // times out: the breaker opens
  std::this_thread::sleep_for(milliseconds(700));  // the pause and retry_interval over
  CHECK_FALSE(cache.get(pk(3), digest_of(3)));     // answered: the breaker closes
  CHECK(obs->closes == 1);
  CHECK(obs->nested_ok);
}
