// Revocation stress: validator threads check a mix of valid, wrong,
// revoked, deleted and unknown keys while other threads create, revoke and delete, for a
// fixed number of operations, on MemoryStore and SqliteStore (both with a MemoryCache).
//
// Invariants checked on every single result (not sampled):
//   - a validation that started after revoke()/remove() returned is never `valid`;
//   - a wrong secret is never `valid`; an unknown key is always `not_found`;
//   - a key nobody had started to revoke or delete when the validation ended is `valid`
//     (no stale negative verdict), and nothing ever answers `error` or `malformed`.
// The sizes give ~10-20 s in a Debug build on 2 cores; APIKEYS_STRESS_SCALE (percent,
// default 100) shrinks or grows every count, e.g. for slow sanitizer builds.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using namespace apikeys;

namespace {

// Scales a count by APIKEYS_STRESS_SCALE percent (at least 1).
int scaled(int n) {
  static const long percent = [] {
    const char* s = std::getenv("APIKEYS_STRESS_SCALE");
    const long v = s != nullptr ? std::strtol(s, nullptr, 10) : 100;
    return v > 0 ? v : 100;
  }();
  return static_cast<int>(std::max<long>(1, n * percent / 100));
}

enum State : int {
  kActive = 0,   // nobody has called revoke() or remove() on it yet
  kGoing = 1,    // revoke() or remove() called, not returned yet
  kRevoked = 2,  // revoke() returned
  kRemoved = 3,  // remove() returned
};

struct Slot {
  std::string pk;
  std::string sk;
  std::string wrong_sk;  // same shape, one character changed
  Uuid id;
  Uuid account;
  std::atomic<int> state{kActive};
  std::atomic<bool> remove_claimed{false};  // a revoked key is removed at most once
};

struct Counts {
  int initial_keys;
  int validators;
  int validations_per_thread;
  int creates;
  int revokes;
  int removes;
};

struct Report {
  std::atomic<long> validations{0};
  std::atomic<long> valid{0};
  std::atomic<long> rejected_after_gone{0};
  std::atomic<long> creates{0};
  std::atomic<long> revokes{0};
  std::atomic<long> removes{0};
  std::atomic<long> violations{0};
  std::mutex mu;
  std::vector<std::string> messages;  // first few violations, for the failure report

  void violation(const std::string& what) {
    ++violations;
    std::lock_guard<std::mutex> lock(mu);
    if (messages.size() < 20) messages.push_back(what);
  }
};

// A secret of the same format with its last character changed.
std::string wrong_secret(const std::string& sk) {
  std::string w = sk;
  w.back() = w.back() == 'a' ? 'b' : 'a';
  return w;
}

class Pool {
 public:
  explicit Pool(std::size_t capacity) : slots_(capacity) {}

  // Single producer (the creator thread, or the set-up before threads start).
  void publish(const CreatedKey& c) {
    const std::size_t i = size_.load(std::memory_order_relaxed);
    Slot& s = slots_.at(i);
    s.pk = c.info.public_key;
    s.sk = std::string(c.secret_key.reveal());
    s.wrong_sk = wrong_secret(s.sk);
    s.id = c.info.key_id;
    s.account = c.info.account_id;
    size_.store(i + 1, std::memory_order_release);
  }
  std::size_t size() const { return size_.load(std::memory_order_acquire); }
  Slot& at(std::size_t i) { return slots_[i]; }

 private:
  std::vector<Slot> slots_;
  std::atomic<std::size_t> size_{0};
};

bool is(const ValidationResult& r, ValidationCode c) { return r.code == c; }

// Checks one validation of a slot with its own secret. `before`/`after`: the slot's
// state read just before the call started and just after it returned.
void check_correct(Report& rep, const Slot& s, int before, int after, const ValidationResult& r,
                   const char* form) {
  const std::string where = std::string(form) + " " + s.pk + ": got " + to_string(r.code);
  if (r.ok()) {
    ++rep.valid;
    if (before == kRevoked || before == kRemoved) {
      rep.violation("valid after revoke/remove returned (" + where + ")");
    }
    if (r.key_id != s.id || r.account_id != s.account)
      rep.violation("valid with wrong ids (" + where + ")");
    return;
  }
  if (before >= kRevoked) ++rep.rejected_after_gone;
  if (after == kActive) {
    rep.violation("an untouched active key was rejected (" + where + ")");
    return;
  }
  if (!is(r, ValidationCode::revoked) && !is(r, ValidationCode::not_found)) {
    rep.violation("unexpected code for a revoked/deleted key (" + where + ")");
    return;
  }
  // Once remove() returned, the key is gone for good: revoked would be a stale verdict.
  if (before == kRemoved && !is(r, ValidationCode::not_found)) {
    rep.violation("a deleted key answered revoked (" + where + ")");
  }
}

void check_wrong(Report& rep, const Slot& s, int after, const ValidationResult& r) {
  const std::string where = s.pk + ": got " + to_string(r.code);
  if (r.ok()) {
    rep.violation("valid for a wrong secret (" + where + ")");
  } else if (after == kActive && !is(r, ValidationCode::wrong_secret)) {
    rep.violation("wrong secret on an active key not answered wrong_secret (" + where + ")");
  } else if (!is(r, ValidationCode::wrong_secret) && !is(r, ValidationCode::revoked) &&
             !is(r, ValidationCode::not_found)) {
    rep.violation("unexpected code for a wrong secret (" + where + ")");
  }
}

void validator_thread(KeyManager& m, Pool& pool, Report& rep, int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string unknown_pk;
  std::string unknown_sk;
  for (int i = 0; i < n; ++i) {
    const int kind = static_cast<int>(rng() % 100);
    if (kind < 10) {
      // A key that was never created (random, so it is not in any cache either).
      unknown_pk = "pk_";
      unknown_sk = "sk_";
      append_random_base62(unknown_pk, 32);
      append_random_base62(unknown_sk, 32);
      const auto r = m.validate(unknown_pk, unknown_sk);
      if (!is(r, ValidationCode::not_found)) {
        rep.violation("unknown key answered " + std::string(to_string(r.code)));
      }
      ++rep.validations;
      continue;
    }
    const std::size_t size = pool.size();
    // Mostly recent keys (the ones being revoked and deleted right now), some old ones.
    const std::size_t window = std::min<std::size_t>(size, 256);
    const std::size_t idx = (rng() % 4 == 0) ? rng() % size : size - 1 - rng() % window;
    const Slot& s = pool.at(idx);
    const int before = s.state.load(std::memory_order_acquire);
    if (kind < 30) {
      const auto r = m.validate(s.pk, s.wrong_sk);
      check_wrong(rep, s, s.state.load(std::memory_order_acquire), r);
    } else if (kind < 45) {
      const auto r = m.validate(s.pk + ":" + s.sk);
      check_correct(rep, s, before, s.state.load(std::memory_order_acquire), r, "token");
    } else {
      const auto r = m.validate(s.pk, s.sk);
      check_correct(rep, s, before, s.state.load(std::memory_order_acquire), r, "pair");
    }
    ++rep.validations;
  }
}

// Picks a slot whose state is kActive and claims it (kGoing); nullptr when none found.
// Prefers the newest keys; once the creator has finished those can all be taken, so it
// then falls back to the newest active key anywhere (else the revoker and the deleter
// starve, and the run ends short of its operation counts).
Slot* claim_active(Pool& pool, std::mt19937& rng) {
  auto claim = [](Slot& s) {
    int expected = kActive;
    return s.state.compare_exchange_strong(expected, kGoing, std::memory_order_acq_rel);
  };
  const std::size_t size = pool.size();
  for (int attempt = 0; attempt < 64; ++attempt) {
    const std::size_t window = std::min<std::size_t>(size, 256);
    Slot& s = pool.at(size - 1 - rng() % window);
    if (claim(s)) return &s;
  }
  for (std::size_t i = size; i-- > 0;) {
    if (claim(pool.at(i))) return &pool.at(i);
  }
  return nullptr;
}

void run_stress(KeyManager& m, const Counts& c, const char* label) {
  Pool pool(static_cast<std::size_t>(c.initial_keys + c.creates));
  for (int i = 0; i < c.initial_keys; ++i) {
    const auto account = apikeys_test::account_id(static_cast<std::uint8_t>(1 + i % 4));
    pool.publish(m.create(account, CreateRequest{"stress " + std::to_string(i), "", std::nullopt}));
  }

  Report rep;
  std::atomic<bool> go{false};
  auto wait_go = [&] {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
  };
  auto guarded = [&](const char* who, auto&& body) {
    try {
      body();
    } catch (const std::exception& e) {
      rep.violation(std::string(who) + " threw: " + e.what());
    }
  };

  std::vector<std::thread> threads;
  for (int v = 0; v < c.validators; ++v) {
    threads.emplace_back([&, v] {
      wait_go();
      guarded("validator", [&] {
        validator_thread(m, pool, rep, c.validations_per_thread, 1000u + static_cast<unsigned>(v));
      });
    });
  }
  threads.emplace_back([&] {  // creator: the only producer of slots
    wait_go();
    guarded("creator", [&] {
      for (int i = 0; i < c.creates; ++i) {
        const auto account = apikeys_test::account_id(static_cast<std::uint8_t>(1 + i % 4));
        pool.publish(
            m.create(account, CreateRequest{"new " + std::to_string(i), "", std::nullopt}));
        ++rep.creates;
      }
    });
  });
  threads.emplace_back([&] {  // revoker
    wait_go();
    guarded("revoker", [&] {
      std::mt19937 rng(7);
      // A failed claim (the deleter took the candidates) does not use up an operation;
      // the attempt budget only stops a starved loop from spinning forever.
      for (int i = 0, attempts = 0; i < c.revokes && attempts < c.revokes * 100; ++attempts) {
        Slot* s = claim_active(pool, rng);
        if (s == nullptr) {
          std::this_thread::yield();
          continue;
        }
        const KeyInfo info = m.revoke(s->account, s->id);
        if (info.status != KeyStatus::revoked) rep.violation("revoke returned an active key");
        // Revoking twice succeeds. Before the state says kRevoked: from then on the
        // deleter may remove the key, and a second revoke would rightly throw not_found.
        if (i % 8 == 0) m.revoke(s->account, s->id);
        s->state.store(kRevoked, std::memory_order_release);
        ++rep.revokes;
        ++i;
      }
    });
  });
  threads.emplace_back([&] {  // deleter: active keys, and keys already revoked
    wait_go();
    guarded("deleter", [&] {
      std::mt19937 rng(11);
      for (int i = 0, attempts = 0; i < c.removes && attempts < c.removes * 100; ++attempts) {
        Slot* s = nullptr;
        if (i % 3 == 0) {
          const std::size_t size = pool.size();
          Slot& cand = pool.at(rng() % size);
          if (cand.state.load(std::memory_order_acquire) == kRevoked &&
              !cand.remove_claimed.exchange(true)) {
            (void)m.remove(cand.account, cand.id);
            cand.state.store(kRemoved, std::memory_order_release);
            ++rep.removes;
            ++i;
            continue;
          }
        }
        s = claim_active(pool, rng);
        if (s == nullptr) {
          std::this_thread::yield();
          continue;
        }
        s->remove_claimed.store(true);
        (void)m.remove(s->account, s->id);
        s->state.store(kRemoved, std::memory_order_release);
        ++rep.removes;
        ++i;
      }
    });
  });

  const auto t0 = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // After the storm: every key answers exactly what its final state says.
  long final_checked = 0;
  for (std::size_t i = 0; i < pool.size(); ++i) {
    const Slot& s = pool.at(i);
    const auto r = m.validate(s.pk, s.sk);
    const int st = s.state.load();
    const ValidationCode expected = st == kActive    ? ValidationCode::valid
                                    : st == kRevoked ? ValidationCode::revoked
                                                     : ValidationCode::not_found;
    if (r.code != expected) {
      rep.violation("final state of " + s.pk + ": got " + to_string(r.code) + ", expected " +
                    to_string(expected));
    }
    if (m.validate(s.pk, s.wrong_sk).ok()) rep.violation("final: wrong secret valid for " + s.pk);
    ++final_checked;
  }

  std::cout << "stress[" << label << "]: " << c.validators << " validator + 3 writer threads, "
            << rep.validations.load() << " validations (" << rep.valid.load() << " valid, "
            << rep.rejected_after_gone.load() << " rejected after revoke/remove), "
            << rep.creates.load() << " creates, " << rep.revokes.load() << " revokes, "
            << rep.removes.load() << " deletes in " << seconds << " s; final sweep "
            << final_checked << " keys\n";
  for (const auto& msg : rep.messages)
    std::cerr << "stress[" << label << "] violation: " << msg << "\n";
  CHECK(rep.violations.load() == 0);
  CHECK(rep.validations.load() == static_cast<long>(c.validators) * c.validations_per_thread);
  CHECK(rep.creates.load() == c.creates);
  CHECK(rep.revokes.load() > c.revokes / 2);
  CHECK(rep.removes.load() > c.removes / 2);
}

std::shared_ptr<MemoryCache> small_cache() {
  // Small, so evictions happen as well as hits and fills.
  MemoryCacheOptions o;
  o.capacity = 512;
  o.shards = 8;
  return std::make_shared<MemoryCache>(o);
}

KeyManagerOptions stress_options() {
  KeyManagerOptions o;
  o.validation.cache = small_cache();
  o.validation.last_use_interval = std::chrono::milliseconds(50);  // last-use writes too
  o.validation.flush_interval = std::chrono::milliseconds(20);
  o.validation.revision_poll_interval = std::chrono::milliseconds(20);
  return o;
}

}  // namespace

TEST_CASE("stress: revoke and delete under concurrent validation, MemoryStore + MemoryCache",
          "[stress]") {
  auto store = std::make_shared<MemoryStore>();
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  KeyManager m(store, hasher, stress_options());
  const Counts c{scaled(500), 4, scaled(150'000), scaled(6'000), scaled(3'000), scaled(3'000)};
  run_stress(m, c, "memory");
}

TEST_CASE("stress: revoke and delete under concurrent validation, SqliteStore + MemoryCache",
          "[stress]") {
  apikeys_test::TempDir dir;
  SqliteStoreOptions so;
  so.durable = false;  // the race is the point, not fsync; WAL keeps it crash-safe anyway
  auto store = std::make_shared<SqliteStore>(dir.file("stress.db"), so);
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  KeyManager m(store, hasher, stress_options());
  const Counts c{scaled(300), 4, scaled(40'000), scaled(1'500), scaled(800), scaled(800)};
  run_stress(m, c, "sqlite");
}
