// The Validator's observers: one ValidateEvent per call with the path, the cache's
// answer, admission and the key (never the secret), every failure it handles on its own
// reported through on_error() (and a poll's recovery), background writes through
// on_write(), and an observer that throws changes nothing but a counter.
#include "catch.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

namespace {

using apikeys::AdmissionResult;
using apikeys::BackgroundError;
using apikeys::BackgroundWrite;
using apikeys::CacheResult;
using apikeys::Component;
using apikeys::ValidateEvent;
using apikeys::ValidatePath;
using apikeys::ValidationCode;
using namespace std::chrono_literals;

// Keeps copies of everything it sees (events borrow their strings).
class Recorder : public apikeys::Observer {
 public:
  struct Error {
    Component component;
    std::string operation;
    std::string message;
    bool recovered;
  };

  void on_validate(const ValidateEvent& e) override {
    std::lock_guard<std::mutex> l(mu);
    validations.push_back(e);
  }
  void on_error(const BackgroundError& e) override {
    std::lock_guard<std::mutex> l(mu);
    errors.push_back(
        Error{e.component, std::string(e.operation), std::string(e.message), e.recovered});
  }
  void on_write(const BackgroundWrite& w) override {
    std::lock_guard<std::mutex> l(mu);
    writes.push_back(w);
  }

  std::vector<ValidateEvent> take_validations() {
    std::lock_guard<std::mutex> l(mu);
    return std::exchange(validations, {});
  }
  std::vector<Error> take_errors() {
    std::lock_guard<std::mutex> l(mu);
    return std::exchange(errors, {});
  }
  std::size_t error_count(Component c, const std::string& op, bool recovered) {
    std::lock_guard<std::mutex> l(mu);
    std::size_t n = 0;
    for (const Error& e : errors) {
      if (e.component == c && e.operation == op && e.recovered == recovered) ++n;
    }
    return n;
  }

  std::mutex mu;
  std::vector<ValidateEvent> validations;
  std::vector<Error> errors;
  std::vector<BackgroundWrite> writes;
};

class Thrower : public apikeys::Observer {
 public:
  void on_validate(const ValidateEvent&) override { throw std::runtime_error("observer bug"); }
};

// A cache whose get and put throw on demand.
class FailingCache final : public apikeys::Cache {
 public:
  apikeys::MemoryCache inner;
  std::atomic<bool> fail_get{false};
  std::atomic<bool> fail_put{false};
  std::atomic<bool> fail_clear{false};

  std::optional<apikeys::Verdict> get(std::string_view pk, const apikeys::Digest& d) override {
    if (fail_get) throw std::runtime_error("cache get down");
    return inner.get(pk, d);
  }
  void put(std::string_view pk, const apikeys::Digest& d, const apikeys::Verdict& v,
           std::chrono::milliseconds ttl, std::uint64_t token) override {
    if (fail_put) throw std::runtime_error("cache put down");
    inner.put(pk, d, v, ttl, token);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner.fill_token(pk); }
  void erase(std::string_view pk) override { inner.erase(pk); }
  void clear() override {
    if (fail_clear) throw std::runtime_error("cache clear down");
    inner.clear();
  }
};

// Waits (up to 10 s) for `done`; false when it never came.
template <class F>
bool eventually(F done) {
  for (int i = 0; i < 1000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

}  // namespace

TEST_CASE("Observer: each validation is one event with its path, cache answer and key",
          "[observer]") {
  auto t = apikeys_test::make_manager();
  const auto account = apikeys_test::account_id(1);
  const auto key = t->create(account, apikeys::CreateRequest("observed"));
  const std::string secret(key.secret_key.reveal());
  const std::string token = key.info.public_key + ":" + secret;

  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.cache = std::make_shared<apikeys::MemoryCache>();
  o.clock = t.clock;
  o.record_last_use = false;
  o.observers = {rec};
  apikeys::Validator v(t.store, t.hasher, o);

  CHECK(v.validate("no colon here").code == ValidationCode::malformed);
  CHECK(v.validate(token).code == ValidationCode::valid);
  CHECK(v.validate(token).code == ValidationCode::valid);
  std::string wrong = secret;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  CHECK(v.validate(key.info.public_key, wrong).code == ValidationCode::wrong_secret);
  std::string absent = key.info.public_key;
  absent.back() = absent.back() == 'a' ? 'b' : 'a';
  CHECK(v.validate(absent, secret).code == ValidationCode::not_found);
  apikeys::Requirements needs;
  needs.scopes = {"admin"};
  CHECK(v.validate(token, needs).code == ValidationCode::insufficient_scope);

  const auto events = rec->take_validations();
  REQUIRE(events.size() == 6);
  CHECK(events[0].code == ValidationCode::malformed);
  CHECK(events[0].path == ValidatePath::format);
  CHECK(events[0].cache == CacheResult::none);
  CHECK(events[0].key_id.is_nil());

  CHECK(events[1].code == ValidationCode::valid);
  CHECK(events[1].path == ValidatePath::store);
  CHECK(events[1].cache == CacheResult::miss);
  CHECK(events[1].key_id == key.info.key_id);
  CHECK(events[1].account_id == account);
  CHECK(events[1].admission == AdmissionResult::none);
  CHECK(events[1].duration.count() > 0);

  CHECK(events[2].path == ValidatePath::cache);
  CHECK(events[2].cache == CacheResult::hit);
  CHECK(events[2].key_id == key.info.key_id);

  // Before the secret is proven, the event names no key.
  CHECK(events[3].code == ValidationCode::wrong_secret);
  CHECK(events[3].path == ValidatePath::store);
  CHECK(events[3].key_id.is_nil());
  CHECK(events[4].code == ValidationCode::not_found);
  CHECK(events[4].key_id.is_nil());

  CHECK(events[5].code == ValidationCode::insufficient_scope);
  CHECK(events[5].key_id == key.info.key_id);
  CHECK(rec->take_errors().empty());
}

TEST_CASE("Observer: admission's decision is in the event", "[observer][admission]") {
  auto t = apikeys_test::make_manager();
  apikeys::CreateRequest req("limited");
  apikeys::RateLimit one;
  one.name = "per-day";
  one.limit = 1;
  one.period = std::chrono::hours(24);
  req.rate_limits = {one};
  const auto key = t->create(apikeys_test::account_id(2), req);
  const std::string token = key.info.public_key + ":" + std::string(key.secret_key.reveal());

  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.clock = t.clock;
  o.record_last_use = false;
  o.observers = {rec};
  apikeys::Validator v(t.store, t.hasher, o);
  CHECK(v.validate(token).code == ValidationCode::valid);
  CHECK(v.validate(token).code == ValidationCode::rate_limited);
  const auto events = rec->take_validations();
  REQUIRE(events.size() == 2);
  CHECK(events[0].admission == AdmissionResult::admitted);
  CHECK(events[1].admission == AdmissionResult::rate_limited);
  CHECK(events[1].key_id == key.info.key_id);
}

TEST_CASE("Observer: a limiter failure is reported and flagged in the event",
          "[observer][admission]") {
  class Broken final : public apikeys::Limiter {
   public:
    apikeys::Admission admit(const apikeys::AdmissionRequest&) override {
      throw apikeys::Error(apikeys::ErrorCode::busy, "limiter unreachable");
    }
  };
  auto t = apikeys_test::make_manager();
  apikeys::CreateRequest req("limited");
  apikeys::RateLimit one;
  one.name = "per-second";
  one.limit = 10;
  one.period = std::chrono::seconds(1);
  req.rate_limits = {one};
  const auto key = t->create(apikeys_test::account_id(3), req);
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.clock = t.clock;
  o.record_last_use = false;
  o.limiter = std::make_shared<Broken>();
  o.observers = {rec};
  apikeys::Validator v(t.store, t.hasher, o);
  const auto r = v.validate(key.info.public_key, key.secret_key.reveal());
  CHECK(r.code == ValidationCode::error);
  const auto events = rec->take_validations();
  REQUIRE(events.size() == 1);
  CHECK(events[0].admission == AdmissionResult::failed);
  const auto errors = rec->take_errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].component == Component::limiter);
  CHECK(errors[0].operation == "admit");
  CHECK(errors[0].message == "limiter unreachable");
}

TEST_CASE("Observer: a throwing observer changes no answer and is counted", "[observer]") {
  auto t = apikeys_test::make_manager();
  const auto key = t->create(apikeys_test::account_id(4), apikeys::CreateRequest("k"));
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.clock = t.clock;
  o.record_last_use = false;
  o.observers = {std::make_shared<Thrower>(), rec};
  apikeys::Validator v(t.store, t.hasher, o);
  for (int i = 0; i < 3; ++i) {
    CHECK(v.validate(key.info.public_key, key.secret_key.reveal()).code == ValidationCode::valid);
  }
  CHECK(v.observer_failures() == 3);
  // The other observer still sees every validation, and hears of each failure.
  CHECK(rec->take_validations().size() == 3);
  CHECK(rec->error_count(Component::observer, "observe", false) == 3);

  // A null observer is refused when the validator is built.
  apikeys::ValidatorOptions bad;
  bad.observers = {nullptr};
  CHECK_THROWS_AS(apikeys::Validator(t.store, t.hasher, bad), apikeys::Error);
}

TEST_CASE("Observer: cache and store failures on the request path are reported", "[observer]") {
  auto t = apikeys_test::make_manager();
  const auto key = t->create(apikeys_test::account_id(5), apikeys::CreateRequest("k"));
  const std::string secret(key.secret_key.reveal());
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  store->inner.insert(*t.store->find(key.info.public_key));
  auto cache = std::make_shared<FailingCache>();
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.clock = t.clock;
  o.cache = cache;
  o.record_last_use = false;
  o.revision_poll_interval = 0ms;
  o.observers = {rec};
  apikeys::Validator v(store, t.hasher, o);

  cache->fail_get = true;
  CHECK(v.validate(key.info.public_key, secret).code == ValidationCode::valid);
  auto events = rec->take_validations();
  REQUIRE(events.size() == 1);
  CHECK(events[0].cache == CacheResult::error);
  CHECK(events[0].path == ValidatePath::store);
  CHECK(rec->error_count(Component::cache, "get", false) == 1);
  // A failed get gives no fill token, so nothing is put: the put fails on the next miss.
  CHECK(rec->error_count(Component::cache, "put", false) == 0);
  cache->fail_get = false;
  cache->fail_put = true;
  CHECK(v.validate(key.info.public_key, secret).code == ValidationCode::valid);
  events = rec->take_validations();
  REQUIRE(events.size() == 1);
  CHECK(events[0].cache == CacheResult::miss);
  CHECK(rec->error_count(Component::cache, "put", false) == 1);

  store->fail_finds = true;
  CHECK(v.validate(key.info.public_key, secret).code == ValidationCode::error);
  CHECK(rec->error_count(Component::store, "find", false) == 1);
  // The message is the store's, and never the secret.
  for (const auto& e : rec->take_errors()) CHECK(e.message.find(secret) == std::string::npos);
}

TEST_CASE("Observer: last-use writes and their failures reach the observers",
          "[observer][last_use]") {
  auto t = apikeys_test::make_manager();
  const auto a = t->create(apikeys_test::account_id(6), apikeys::CreateRequest("a"));
  const auto b = t->create(apikeys_test::account_id(6), apikeys::CreateRequest("b"));
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  store->inner.insert(*t.store->find(a.info.public_key));
  store->inner.insert(*t.store->find(b.info.public_key));
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.clock = t.clock;
  o.flush_interval = std::chrono::hours(1);  // flushed by hand below
  o.observers = {rec};
  apikeys::Validator v(store, t.hasher, o);
  CHECK(v.validate(a.info.public_key, a.secret_key.reveal()).ok());
  CHECK(v.validate(b.info.public_key, b.secret_key.reveal()).ok());
  v.flush_last_use();
  {
    std::lock_guard<std::mutex> l(rec->mu);
    REQUIRE(rec->writes.size() == 1);
    CHECK(rec->writes[0].component == Component::last_use);
    CHECK(rec->writes[0].rows == 2);
  }
  store->fail_last_use = true;
  t.clock->advance(std::chrono::hours(1));  // past the last-use throttle
  CHECK(v.validate(a.info.public_key, a.secret_key.reveal()).ok());
  v.flush_last_use();
  CHECK(rec->error_count(Component::last_use, "flush", false) == 1);
  CHECK(v.last_use_failures() == 1);
}

TEST_CASE("Observer: a failing revision poll is reported once, then its recovery",
          "[observer][revision_poll]") {
  class FlakyRevision final : public apikeys_test::ForwardingStore {
   public:
    explicit FlakyRevision(std::shared_ptr<apikeys::Store> s)
        : apikeys_test::ForwardingStore(std::move(s)) {}
    std::atomic<bool> fail{false};
    std::atomic<int> calls{0};
    std::uint64_t revision() override {
      ++calls;
      if (fail) throw apikeys::Error(apikeys::ErrorCode::storage, "revision unreadable");
      return 0;
    }
  };
  auto store = std::make_shared<FlakyRevision>(std::make_shared<apikeys::MemoryStore>());
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.cache = std::make_shared<apikeys::MemoryCache>();
  o.record_last_use = false;
  o.rehash_on_use = false;
  o.revision_poll_interval = 5ms;
  o.observers = {rec};
  apikeys::Validator v(
      store, std::make_shared<apikeys::HmacSha256Hasher>(std::string(apikeys_test::kTestPepper)),
      o);
  store->fail = true;
  CHECK(eventually([&] { return rec->error_count(Component::revision_poll, "poll", false) > 0; }));
  // Several more failed polls (counted, not slept for: a loaded machine may run none).
  int seen = store->calls;
  CHECK(eventually([&] { return store->calls >= seen + 5; }));
  CHECK(rec->error_count(Component::revision_poll, "poll", false) == 1);
  store->fail = false;
  CHECK(eventually([&] { return rec->error_count(Component::revision_poll, "poll", true) > 0; }));
  seen = store->calls;
  CHECK(eventually([&] { return store->calls >= seen + 5; }));
  CHECK(rec->error_count(Component::revision_poll, "poll", true) == 1);
}

TEST_CASE("Observer: a refusal answered from the cache names no key", "[observer]") {
  auto t = apikeys_test::make_manager();
  const auto account = apikeys_test::account_id(7);
  const auto key = t->create(account, apikeys::CreateRequest("revoked"));
  t->revoke(account, key.info.key_id);
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.cache = std::make_shared<apikeys::MemoryCache>();
  o.clock = t.clock;
  o.record_last_use = false;
  o.observers = {rec};
  apikeys::Validator v(t.store, t.hasher, o);
  CHECK(v.validate(key.info.public_key, key.secret_key.reveal()).code == ValidationCode::revoked);
  CHECK(v.validate(key.info.public_key, key.secret_key.reveal()).code == ValidationCode::revoked);
  const auto events = rec->take_validations();
  REQUIRE(events.size() == 2);
  CHECK(events[1].path == ValidatePath::cache);
  CHECK(events[1].cache == CacheResult::hit);
  CHECK(events[1].key_id.is_nil());
  CHECK(events[1].account_id.is_nil());
}

TEST_CASE("Observer: an unreadable baseline revision and a failed cache clear at construction",
          "[observer][revision_poll]") {
  class NoRevision final : public apikeys_test::ForwardingStore {
   public:
    using apikeys_test::ForwardingStore::ForwardingStore;
    std::uint64_t revision() override {
      throw apikeys::Error(apikeys::ErrorCode::storage, "revision unreadable");
    }
  };
  auto store = std::make_shared<NoRevision>(std::make_shared<apikeys::MemoryStore>());
  auto cache = std::make_shared<FailingCache>();
  cache->fail_clear = true;
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.cache = cache;
  o.record_last_use = false;
  o.rehash_on_use = false;
  o.revision_poll_interval = std::chrono::hours(1);  // no poll during the test
  o.observers = {rec};
  apikeys::Validator v(
      store, std::make_shared<apikeys::HmacSha256Hasher>(std::string(apikeys_test::kTestPepper)),
      o);
  CHECK(rec->error_count(Component::revision_poll, "baseline", false) == 1);
  CHECK(rec->error_count(Component::cache, "clear", false) == 1);
}

TEST_CASE("Observer: an observer may flush last use from on_write and on_error",
          "[observer][last_use]") {
  // flush_last_use() is public: an observer that calls it (to push pending writes out
  // when it sees one) must not find the flush lock still held by the flush that
  // reported to it.
  class Reflusher : public apikeys::Observer {
   public:
    apikeys::Validator* v = nullptr;
    std::atomic<int> writes{0};
    std::atomic<int> errors{0};
    void on_write(const BackgroundWrite&) override {
      ++writes;
      v->flush_last_use();
    }
    void on_error(const BackgroundError&) override {
      ++errors;
      v->flush_last_use();
    }
  };
  auto t = apikeys_test::make_manager();
  const auto a = t->create(apikeys_test::account_id(7), apikeys::CreateRequest("a"));
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  store->inner.insert(*t.store->find(a.info.public_key));
  auto obs = std::make_shared<Reflusher>();
  apikeys::ValidatorOptions o;
  o.clock = t.clock;
  o.flush_interval = std::chrono::hours(1);  // flushed by hand below
  o.observers = {obs};
  auto v = std::make_unique<apikeys::Validator>(store, t.hasher, o);
  obs->v = v.get();
  CHECK(v->validate(a.info.public_key, a.secret_key.reveal()).ok());
  std::atomic<bool> done{false};
  std::thread flusher([&] {
    v->flush_last_use();  // a write: on_write
    store->fail_last_use = true;
    t.clock->advance(std::chrono::hours(1));  // past the last-use throttle
    (void)v->validate(a.info.public_key, a.secret_key.reveal());
    v->flush_last_use();  // a failure: on_error
    done = true;
  });
  if (!eventually([&] { return done.load(); })) {
    FAIL_CHECK("flush_last_use() from an observer deadlocked");
    std::_Exit(1);  // the flusher holds the flush lock forever
  }
  flusher.join();
  CHECK(obs->writes == 1);
  CHECK(obs->errors == 1);
}

TEST_CASE("Observer: a poll that reads the revision but cannot clear the cache is no recovery",
          "[observer][revision_poll]") {
  // The revision reads fine; what fails is dropping the stale verdicts (the cache's
  // clear). Every poll fails: one failure, and no "recovered" until one succeeds.
  class FlakyRevision final : public apikeys_test::ForwardingStore {
   public:
    explicit FlakyRevision(std::shared_ptr<apikeys::Store> s)
        : apikeys_test::ForwardingStore(std::move(s)) {}
    std::atomic<bool> fail{false};
    std::uint64_t revision() override {
      if (fail) throw apikeys::Error(apikeys::ErrorCode::storage, "revision unreadable");
      return 0;
    }
  };
  class UnclearableCache final : public apikeys::Cache {
   public:
    apikeys::MemoryCache inner;
    std::atomic<bool> fail_clear{false};
    std::optional<apikeys::Verdict> get(std::string_view pk, const apikeys::Digest& d) override {
      return inner.get(pk, d);
    }
    void put(std::string_view pk, const apikeys::Digest& d, const apikeys::Verdict& v,
             std::chrono::milliseconds ttl, std::uint64_t token) override {
      inner.put(pk, d, v, ttl, token);
    }
    std::uint64_t fill_token(std::string_view pk) override { return inner.fill_token(pk); }
    void erase(std::string_view pk) override { inner.erase(pk); }
    void clear() override {
      if (fail_clear) throw std::runtime_error("cache clear down");
      inner.clear();
    }
  };
  auto store = std::make_shared<FlakyRevision>(std::make_shared<apikeys::MemoryStore>());
  auto cache = std::make_shared<UnclearableCache>();
  auto rec = std::make_shared<Recorder>();
  apikeys::ValidatorOptions o;
  o.cache = cache;
  o.record_last_use = false;
  o.rehash_on_use = false;
  o.revision_poll_interval = 5ms;
  o.observers = {rec};
  apikeys::Validator v(
      store, std::make_shared<apikeys::HmacSha256Hasher>(std::string(apikeys_test::kTestPepper)),
      o);
  cache->fail_clear = true;
  store->fail = true;  // a failed poll: the next ones must clear the cache, and cannot
  CHECK(eventually([&] { return rec->error_count(Component::revision_poll, "poll", false) > 0; }));
  store->fail = false;
  std::this_thread::sleep_for(100ms);  // many polls, each failing to clear
  CHECK(rec->error_count(Component::revision_poll, "poll", false) == 1);
  CHECK(rec->error_count(Component::revision_poll, "poll", true) == 0);
  cache->fail_clear = false;
  CHECK(eventually([&] { return rec->error_count(Component::revision_poll, "poll", true) > 0; }));
  std::this_thread::sleep_for(50ms);
  CHECK(rec->error_count(Component::revision_poll, "poll", false) == 1);
  CHECK(rec->error_count(Component::revision_poll, "poll", true) == 1);
}
