// PostgresStore credits against a real server (APIKEYS_TEST_PG): exactness when many
// validators charge one lineage at once (two processes, then many threads of one
// process), a refill applied once when two processes race on the same period, and the
// limiter failure policy when the server is down. The processes are this program run
// again on a hidden test case, told what to do through the environment.
#include <libpq-fe.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_limiter.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/postgres_store.hpp"
#include "apikeys/store.hpp"
#include "catch.hpp"
#include "server_support.hpp"
#include "store_contract.hpp"
#include "test_support.hpp"

extern char** environ;

using apikeys::ValidationCode;
using std::chrono::milliseconds;

namespace {

apikeys::PostgresStoreOptions credit_options(const std::string& schema) {
  apikeys::PostgresStoreOptions o;
  o.schema = schema;
  o.pool_size = 8;
  o.connect_timeout = milliseconds(2000);
  o.statement_timeout = milliseconds(5000);
  o.pool_wait = milliseconds(5000);
  return o;
}

apikeys::KeyManagerOptions credit_manager_options() {
  apikeys::KeyManagerOptions o;
  o.validation.cache = std::make_shared<apikeys::MemoryCache>();
  o.validation.record_last_use = false;
  return o;
}

std::string token_of(const apikeys::CreatedKey& k) {
  return k.info.public_key + ":" + std::string(k.secret_key.reveal());
}

std::int64_t wall_millis() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// Drops the schema the test made when it ends (the server may be a developer's own).
struct SchemaDropper {
  std::string conninfo;
  std::string schema;
  ~SchemaDropper() {
    PGconn* c = PQconnectdb(conninfo.c_str());
    if (PQstatus(c) == CONNECTION_OK) {
      PQsetNoticeProcessor(
          c, [](void*, const char*) {}, nullptr);
      PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + schema + "\" CASCADE").c_str()));
    }
    PQfinish(c);
  }
};

// Runs this program's hidden child case with `env` added; returns its pid.
pid_t spawn_child(const std::vector<std::string>& env) {
  std::vector<std::string> vars = env;
  for (char** e = environ; *e != nullptr; ++e) vars.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& v : vars) envp.push_back(v.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string name = "PostgresStore credits child";
  std::vector<char*> argv = {self.data(), name.data(), nullptr};
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), envp.data()) == 0);
  return pid;
}

// Waits for `pid`; REQUIREs a clean exit and returns the count it wrote to `out`.
std::uint64_t child_count(pid_t pid, const std::string& out) {
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  std::ifstream in(out);
  std::uint64_t n = 0;
  REQUIRE(static_cast<bool>(in >> n));
  return n;
}

std::string temp_file(const std::string& stem) {
  return "/tmp/" + apikeys_test::unique_name(stem) + ".count";
}

// The event of a refill, as the library's system actor records it (the credits only).
class RefillAudit final : public apikeys::ChangeAudit {
 public:
  std::optional<apikeys::AuditEvent> event(const apikeys::KeyInfo* before,
                                           const apikeys::KeyInfo* after) const override {
    if (before == nullptr || after == nullptr) return std::nullopt;
    apikeys::AuditEvent e;
    e.event_id = apikeys::Uuid::random();
    e.time = apikeys::from_unix_millis(wall_millis());
    e.account_id = after->account_id;
    e.key_id = after->key_id;
    e.action = apikeys::AuditAction::refill;
    e.context.actor.type = apikeys::ActorType::system;
    e.context.actor.id = "apikeys";
    e.context.actor.detail = "credit refill";
    e.before = credits_json(*before);
    e.after = credits_json(*after);
    return e;
  }

 private:
  static std::string credits_json(const apikeys::KeyInfo& k) {
    return "{\"credits\":" +
           (k.credits ? std::to_string(k.credits->remaining) : std::string("null")) + "}";
  }
};

}  // namespace

// The child: APIKEYS_PG_CREDITS_MODE "validate" (validate() the token in
// APIKEYS_PG_CREDITS_ARG), "take" (take_credits(lineage ARG, 1, 1, NOW) after one take
// of 0) or "take_audited" (the same with take_credits_audited() and a RefillAudit),
// TRIES times in all from four threads, starting at wall-clock millisecond START;
// writes how many were admitted to OUT.
TEST_CASE("PostgresStore credits child", "[.]") {
  const auto pg = apikeys_test::test_pg();
  REQUIRE(pg);
  const std::string mode = env_or_empty("APIKEYS_PG_CREDITS_MODE");
  const std::string arg = env_or_empty("APIKEYS_PG_CREDITS_ARG");
  const int tries = std::atoi(env_or_empty("APIKEYS_PG_CREDITS_TRIES").c_str());
  const std::int64_t start = std::atoll(env_or_empty("APIKEYS_PG_CREDITS_START").c_str());
  auto store = std::make_shared<apikeys::PostgresStore>(
      *pg, credit_options(env_or_empty("APIKEYS_PG_CREDITS_SCHEMA")));
  apikeys::KeyManager manager(store, apikeys_test::hasher(), credit_manager_options());
  std::uint64_t admitted = 0;
  const auto lineage = apikeys::Uuid::parse(arg);
  const apikeys::TimePoint now =
      apikeys::from_unix_millis(std::atoll(env_or_empty("APIKEYS_PG_CREDITS_NOW").c_str()));
  // Warm up (connections, the cached verdict) before the start line.
  if (mode == "validate") {
    (void)manager.validate(arg, apikeys::Requirements{{}, 0});
  } else {
    REQUIRE(lineage);
  }
  while (wall_millis() < start) std::this_thread::sleep_for(milliseconds(1));
  // Four threads, so that the two processes' requests overlap as much as they can.
  constexpr int kThreads = 4;
  std::atomic<std::uint64_t> count{0};
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  const RefillAudit audit;
  const bool audited = mode == "take_audited";
  const auto take = [&](std::uint64_t n) {
    return audited ? store->take_credits_audited(*lineage, n, n, now, audit)
                   : store->take_credits(*lineage, n, n, now);
  };
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      try {
        if (mode != "validate") (void)take(0);
        for (int i = 0; i < tries / kThreads; ++i) {
          if (mode == "validate") {
            const auto r = manager.validate(arg);
            if (r.code == ValidationCode::valid) {
              count.fetch_add(1);
            } else if (r.code != ValidationCode::usage_exceeded) {
              unexpected.fetch_add(1);
            }
          } else {
            count.fetch_add(take(1).taken);
          }
        }
      } catch (...) {
        unexpected.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  REQUIRE(unexpected.load() == 0);
  admitted = count.load();
  std::ofstream(env_or_empty("APIKEYS_PG_CREDITS_OUT")) << admitted << "\n";
}

TEST_CASE("PostgresStore: two processes charging one key admit exactly its credits",
          "[servers][postgres][credits]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaDropper dropper{*pg, apikeys_test::unique_name("apikeys_c")};
  const std::string& schema = dropper.schema;
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, credit_options(schema));
  apikeys::KeyManager manager(store, apikeys_test::hasher(), credit_manager_options());
  constexpr std::uint64_t kCredits = 150;
  auto req = apikeys_test::request("two processes");
  apikeys::Credits credits;
  credits.remaining = kCredits;
  req.credits = credits;
  const auto key = manager.create(apikeys_test::account_id(40), req);

  const std::int64_t start = wall_millis() + 1500;
  std::vector<pid_t> pids;
  std::vector<std::string> outs;
  for (int i = 0; i < 2; ++i) {
    outs.push_back(temp_file("pgcredits"));
    pids.push_back(spawn_child(
        {"APIKEYS_PG_CREDITS_MODE=validate", "APIKEYS_PG_CREDITS_ARG=" + token_of(key),
         "APIKEYS_PG_CREDITS_TRIES=" + std::to_string(2 * kCredits),
         "APIKEYS_PG_CREDITS_START=" + std::to_string(start), "APIKEYS_PG_CREDITS_SCHEMA=" + schema,
         "APIKEYS_PG_CREDITS_OUT=" + outs.back()}));
  }
  std::uint64_t admitted = 0;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    const std::uint64_t n = child_count(pids[i], outs[i]);
    std::remove(outs[i].c_str());
    INFO("child " << i << " admitted " << n);
    CHECK(n > 0);  // both took part
    admitted += n;
  }
  CHECK(admitted == kCredits);
  const auto got = manager.get(apikeys_test::account_id(40), key.info.key_id);
  REQUIRE(got.credits);
  CHECK(got.credits->remaining == 0);
  CHECK(manager.validate(token_of(key)).code == ValidationCode::usage_exceeded);
}

TEST_CASE("PostgresStore: many threads charging one key admit exactly its credits",
          "[servers][postgres][credits]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaDropper dropper{*pg, apikeys_test::unique_name("apikeys_c")};
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, credit_options(dropper.schema));
  apikeys::KeyManager manager(store, apikeys_test::hasher(), credit_manager_options());
  constexpr std::uint64_t kCredits = 120;
  auto req = apikeys_test::request("threads");
  apikeys::Credits credits;
  credits.remaining = kCredits;
  req.credits = credits;
  const auto key = manager.create(apikeys_test::account_id(41), req);
  const std::string token = token_of(key);
  std::atomic<std::uint64_t> admitted{0};
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (std::uint64_t i = 0; i < kCredits / 3; ++i) {
        const auto r = manager.validate(token);
        if (r.code == ValidationCode::valid) {
          admitted.fetch_add(1);
        } else if (r.code != ValidationCode::usage_exceeded) {
          unexpected.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(unexpected.load() == 0);
  CHECK(admitted.load() == kCredits);
  CHECK(manager.get(apikeys_test::account_id(41), key.info.key_id).credits->remaining == 0);
}

TEST_CASE("PostgresStore: two processes refilling the same period write the refill once",
          "[servers][postgres][credits]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaDropper dropper{*pg, apikeys_test::unique_name("apikeys_c")};
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, credit_options(dropper.schema));
  apikeys::KeyManager manager(store, apikeys_test::hasher(), credit_manager_options());
  // Empty, refilled today: tomorrow's refill adds 40 (add_capped, cap far above), so a
  // refill written twice would show as 80 taken.
  constexpr std::uint64_t kAmount = 40;
  auto req = apikeys_test::request("refill race");
  apikeys::Credits credits;
  credits.remaining = 0;
  apikeys::CreditRefill refill;
  refill.amount = kAmount;
  refill.mode = apikeys::RefillMode::add_capped;
  refill.cap = 1000;
  credits.refill = refill;
  req.credits = credits;
  const auto key = manager.create(apikeys_test::account_id(42), req);
  const std::int64_t tomorrow = wall_millis() + 86'400'000;
  const std::int64_t start = wall_millis() + 1500;
  std::vector<pid_t> pids;
  std::vector<std::string> outs;
  for (int i = 0; i < 2; ++i) {
    outs.push_back(temp_file("pgrefill"));
    pids.push_back(spawn_child(
        {"APIKEYS_PG_CREDITS_MODE=take", "APIKEYS_PG_CREDITS_ARG=" + key.info.lineage().to_string(),
         "APIKEYS_PG_CREDITS_TRIES=" + std::to_string(2 * kAmount),
         "APIKEYS_PG_CREDITS_NOW=" + std::to_string(tomorrow),
         "APIKEYS_PG_CREDITS_START=" + std::to_string(start),
         "APIKEYS_PG_CREDITS_SCHEMA=" + dropper.schema, "APIKEYS_PG_CREDITS_OUT=" + outs.back()}));
  }
  std::uint64_t taken = 0;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    taken += child_count(pids[i], outs[i]);
    std::remove(outs[i].c_str());
  }
  CHECK(taken == kAmount);
  const auto got = manager.get(apikeys_test::account_id(42), key.info.key_id);
  REQUIRE(got.credits);
  CHECK(got.credits->remaining == 0);
  CHECK(
      got.credits->refilled_period ==
      apikeys::refill_period(apikeys::RefillInterval::daily, apikeys::from_unix_millis(tomorrow)));
}

TEST_CASE("PostgresStore: two processes refilling the same period audit the refill once",
          "[servers][postgres][credits][audit]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaDropper dropper{*pg, apikeys_test::unique_name("apikeys_c")};
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, credit_options(dropper.schema));
  apikeys::KeyManager manager(store, apikeys_test::hasher(), credit_manager_options());
  // As above: a refill written twice would show as 80 taken, and as two events.
  constexpr std::uint64_t kAmount = 40;
  auto req = apikeys_test::request("audited refill race");
  apikeys::Credits credits;
  credits.remaining = 0;
  apikeys::CreditRefill refill;
  refill.amount = kAmount;
  refill.mode = apikeys::RefillMode::add_capped;
  refill.cap = 1000;
  credits.refill = refill;
  req.credits = credits;
  const apikeys::Uuid account = apikeys_test::account_id(43);
  const auto key = manager.create(account, req);
  const std::int64_t tomorrow = wall_millis() + 86'400'000;
  const std::int64_t start = wall_millis() + 1500;
  std::vector<pid_t> pids;
  std::vector<std::string> outs;
  for (int i = 0; i < 2; ++i) {
    outs.push_back(temp_file("pgrefill"));
    pids.push_back(spawn_child({"APIKEYS_PG_CREDITS_MODE=take_audited",
                                "APIKEYS_PG_CREDITS_ARG=" + key.info.lineage().to_string(),
                                "APIKEYS_PG_CREDITS_TRIES=" + std::to_string(2 * kAmount),
                                "APIKEYS_PG_CREDITS_NOW=" + std::to_string(tomorrow),
                                "APIKEYS_PG_CREDITS_START=" + std::to_string(start),
                                "APIKEYS_PG_CREDITS_SCHEMA=" + dropper.schema,
                                "APIKEYS_PG_CREDITS_OUT=" + outs.back()}));
  }
  std::uint64_t taken = 0;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    taken += child_count(pids[i], outs[i]);
    std::remove(outs[i].c_str());
  }
  CHECK(taken == kAmount);
  apikeys::AuditRange range;
  range.limit = 100;
  range.key_id = key.info.key_id;
  std::vector<apikeys::AuditEvent> refills;
  for (const apikeys::AuditEvent& e : store->audit_events(account, range)) {
    if (e.action == apikeys::AuditAction::refill) refills.push_back(e);
  }
  REQUIRE(refills.size() == 1);
  CHECK(refills[0].context.actor.type == apikeys::ActorType::system);
  CHECK(refills[0].before == "{\"credits\":0}");
  CHECK(refills[0].after == "{\"credits\":40}");
}

TEST_CASE("PostgresStore down: a charge fails, deny answers error, allow answers valid",
          "[servers][postgres][credits][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg || !apikeys_test::have_controls({"APIKEYS_TEST_PG_STOP", "APIKEYS_TEST_PG_START"}))
    return;
  SchemaDropper dropper{*pg, apikeys_test::unique_name("apikeys_c")};
  // Keys in memory, credits in PostgreSQL: validation reaches the charge without the
  // server, and only the charge fails.
  auto keys = std::make_shared<apikeys::MemoryStore>();
  apikeys::PostgresStoreOptions o = credit_options(dropper.schema);
  o.statement_timeout = milliseconds(1000);
  o.connect_timeout = milliseconds(1000);
  auto credits_store = std::make_shared<apikeys::PostgresStore>(*pg, o);
  auto limiter = std::make_shared<apikeys::MemoryLimiter>(credits_store);
  apikeys::KeyManagerOptions deny_options = credit_manager_options();
  deny_options.validation.limiter = limiter;
  apikeys::KeyManagerOptions allow_options = credit_manager_options();
  allow_options.validation.limiter = limiter;
  allow_options.validation.limiter_failure = apikeys::LimiterFailurePolicy::allow;
  apikeys::KeyManager deny(keys, apikeys_test::hasher(), deny_options);
  apikeys::KeyManager allow(keys, apikeys_test::hasher(), allow_options);
  auto req = apikeys_test::request("outage");
  apikeys::Credits credits;
  credits.remaining = 5;
  req.credits = credits;
  const auto key = deny.create(apikeys_test::account_id(43), req);
  auto record = keys->find(key.info.public_key);
  REQUIRE(record);
  record->info.credits = credits;  // find() says only that the key has credits
  credits_store->insert(*record);
  const std::string token = token_of(key);
  REQUIRE(deny.validate(token).credits_remaining == std::optional<std::uint64_t>(4));

  bool started = true;
  struct Restart {  // bring the server back even if a REQUIRE below fails
    bool& started;
    ~Restart() {
      if (!started)
        (void)std::system(
            (std::string(std::getenv("APIKEYS_TEST_PG_START")) + " >/dev/null 2>&1").c_str());
    }
  } restart{started};
  started = false;
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_STOP"));
  CHECK_THROWS(credits_store->take_credits(key.info.lineage(), 1, 1, apikeys::TimePoint{}));
  const auto denied = deny.validate(token);
  CHECK(denied.code == ValidationCode::error);
  CHECK(denied.limiter_failed);
  CHECK(deny.validator().limiter_failures() == 1);
  const auto allowed = allow.validate(token);
  CHECK(allowed.code == ValidationCode::valid);
  CHECK(allowed.limiter_failed);
  CHECK(allow.validator().limiter_failures() == 1);
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_START"));
  started = true;
  // Nothing was spent while the server was down.
  const auto after = deny.validate(token);
  CHECK(after.code == ValidationCode::valid);
  CHECK(after.credits_remaining == std::optional<std::uint64_t>(3));
}

namespace {

// What a take did, comparable.
std::string describe(const apikeys::CreditTake& t) {
  return std::to_string(static_cast<int>(t.outcome)) + " taken " + std::to_string(t.taken) +
         " remaining " + std::to_string(t.remaining) + " period " + std::to_string(t.period) +
         " end " + std::to_string(apikeys::to_unix_millis(t.period_end));
}

std::string describe(const std::optional<apikeys::Credits>& c) {
  if (!c) return "none";
  std::string out = std::to_string(c->remaining) + " period " + std::to_string(c->refilled_period);
  if (c->refill) {
    out += " refill " + std::to_string(c->refill->amount) + "/" +
           std::to_string(static_cast<int>(c->refill->interval)) + "/" +
           std::to_string(static_cast<int>(c->refill->mode)) + "/" + std::to_string(c->refill->cap);
  }
  return out;
}

}  // namespace

TEST_CASE("PostgresStore credits do what MemoryStore's do, step by step",
          "[servers][postgres][credits]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaDropper dropper{*pg, apikeys_test::unique_name("apikeys_c")};
  auto pg_store = std::make_shared<apikeys::PostgresStore>(*pg, credit_options(dropper.schema));
  auto memory = std::make_shared<apikeys::MemoryStore>();
  std::vector<std::shared_ptr<apikeys::Store>> stores = {memory, pg_store};
  const apikeys::Uuid account = apikeys_test::account_id(44);
  // 2026-01-30T12:00Z: a day and a month boundary are near.
  apikeys::TimePoint now = apikeys::from_unix_millis(1'769'774'400'000);
  constexpr std::int64_t kHour = 3'600'000;

  using apikeys::RefillInterval;
  using apikeys::RefillMode;
  struct Setup {
    std::uint64_t remaining;
    std::optional<apikeys::CreditRefill> refill;
  };
  const std::vector<Setup> setups = {
      {7, std::nullopt},
      {3, apikeys::CreditRefill{10, RefillInterval::daily, RefillMode::reset, 0}},
      {0, apikeys::CreditRefill{4, RefillInterval::daily, RefillMode::add_capped, 9}},
      {2, apikeys::CreditRefill{5, RefillInterval::monthly, RefillMode::add_capped, 0}},
      {20, apikeys::CreditRefill{6, RefillInterval::monthly, RefillMode::reset, 0}},
  };
  std::vector<apikeys::Uuid> ids;
  for (std::size_t i = 0; i < setups.size(); ++i) {
    apikeys::KeyRecord rec;
    rec.info.key_id = apikeys_test::contract::key_id(static_cast<std::uint32_t>(100 + i));
    rec.info.account_id = account;
    rec.info.public_key = "pk_credits_" + std::to_string(i);
    rec.info.created_at = now;
    rec.info.updated_at = now;
    rec.info.lineage_id = rec.info.key_id;
    apikeys::Credits c;
    c.remaining = setups[i].remaining;
    c.refill = setups[i].refill;
    c.refilled_period = c.refill ? apikeys::refill_period(c.refill->interval, now) : 0;
    rec.info.credits = c;
    for (auto& s : stores) s->insert(rec);
    ids.push_back(rec.info.key_id);
  }
  // The same steps on both; every answer compared.
  std::uint32_t seed = 12345;
  auto next = [&seed](std::uint32_t n) {
    seed = seed * 1103515245u + 12345u;
    return (seed >> 16) % n;
  };
  for (int step = 0; step < 240; ++step) {
    const apikeys::Uuid& id = ids[next(static_cast<std::uint32_t>(ids.size()))];
    const std::uint32_t what = next(10);
    INFO("step " << step << " op " << what << " at " << apikeys::to_unix_millis(now));
    if (what < 6) {
      const std::uint64_t min = next(4);
      const std::uint64_t max = next(3) == 0 ? min + next(6) : min;
      const auto a = memory->take_credits(id, min, max, now);
      const auto b = pg_store->take_credits(id, min, max, now);
      REQUIRE(describe(b) == describe(a));
      if (a.taken > 1 && next(2) == 0) {
        for (auto& s : stores) s->return_credits(id, a.taken - 1, a.period);
      }
    } else if (what == 6) {
      apikeys::CreditsChange change;
      change.op = apikeys::CreditsOp::add;
      change.delta = static_cast<std::int64_t>(next(7)) - 3;
      change.at = now;
      const auto a = memory->change_credits(account, id, change);
      const auto b = pg_store->change_credits(account, id, change);
      REQUIRE(a);
      REQUIRE(b);
      REQUIRE(describe(b->credits) == describe(a->credits));
    } else if (what == 7) {
      apikeys::CreditsChange change;
      change.op = apikeys::CreditsOp::configure;
      change.remaining = next(8);
      change.at = now;
      const auto a = memory->change_credits(account, id, change);
      const auto b = pg_store->change_credits(account, id, change);
      REQUIRE(describe(b->credits) == describe(a->credits));
    } else {
      now += milliseconds(kHour * (1 + next(30)));
    }
    REQUIRE(describe(pg_store->get(account, id)->credits) ==
            describe(memory->get(account, id)->credits));
  }
  // No credits: no_credits; remove and the change log.
  const std::uint64_t before = pg_store->revision();
  apikeys::CreditsChange remove;
  remove.op = apikeys::CreditsOp::remove;
  remove.at = now;
  const auto gone = pg_store->change_credits(account, ids[0], remove);
  REQUIRE(gone);
  CHECK_FALSE(gone->credits);
  CHECK(pg_store->revision() == before + 1);
  CHECK(pg_store->take_credits(ids[0], 0, 0, now).outcome ==
        apikeys::CreditTake::Outcome::no_credits);
  CHECK(pg_store->find("pk_credits_1")->info.credits);
  CHECK_FALSE(pg_store->find("pk_credits_0")->info.credits);
  apikeys::CreditsChange add;
  add.op = apikeys::CreditsOp::add;
  add.delta = 1;
  CHECK(apikeys_test::contract::error_code_of([&] {
          (void)pg_store->change_credits(account, ids[0], add);
        }) == apikeys::ErrorCode::conflict);
  // The last key of a lineage takes its credits along.
  REQUIRE(pg_store->remove(account, ids[1]));
  CHECK(pg_store->take_credits(ids[1], 0, 0, now).outcome ==
        apikeys::CreditTake::Outcome::no_credits);
}
