// PostgresStore against a real server (APIKEYS_TEST_PG): the shared Store contract,
// sharing between instances, and faults (the server restarting mid-run, the server
// down: `error` for what is not cached, clear management errors, recovery, nothing
// lost). Skipped with a message when no server is configured (a failure under
// APIKEYS_REQUIRE_SERVERS=1). Also: a last-use write stuck on a row lock never delays
// the revision poll.
#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/postgres_store.hpp"
#include "catch.hpp"
#include "server_support.hpp"
#include "store_contract.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::ErrorCode;
using apikeys::ValidationCode;
using apikeys_test::contract::error_code_of;
using apikeys_test::contract::record;
using std::chrono::milliseconds;

namespace {

// Drops the schemas the tests made (the server may be a developer's own).
class SchemaJanitor {
 public:
  explicit SchemaJanitor(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~SchemaJanitor() {
    if (names_.empty()) return;
    PGconn* c = PQconnectdb(conninfo_.c_str());
    if (PQstatus(c) == CONNECTION_OK) {
      PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);  // "drop cascades to ..."
      for (const auto& n : names_) {
        PQclear(PQexec(c, ("DROP SCHEMA IF EXISTS \"" + n + "\" CASCADE").c_str()));
      }
    }
    PQfinish(c);
  }
  SchemaJanitor(const SchemaJanitor&) = delete;
  SchemaJanitor& operator=(const SchemaJanitor&) = delete;

  std::string make() {
    names_.push_back(apikeys_test::unique_name("apikeys_t"));
    return names_.back();
  }

 private:
  std::string conninfo_;
  std::vector<std::string> names_;
};

apikeys::PostgresStoreOptions options_for(const std::string& schema) {
  apikeys::PostgresStoreOptions o;
  o.schema = schema;
  o.connect_timeout = milliseconds(2000);
  o.statement_timeout = milliseconds(2000);
  o.pool_wait = milliseconds(2000);
  return o;
}

apikeys::KeyManagerOptions manager_options(std::shared_ptr<apikeys::Cache> cache,
                                           milliseconds poll = milliseconds(250)) {
  apikeys::KeyManagerOptions o;
  o.validation.cache = std::move(cache);
  o.validation.revision_poll_interval = poll;
  o.validation.flush_interval = milliseconds(100);
  return o;
}

}  // namespace

using apikeys_test::hasher;
using apikeys_test::request;

TEST_CASE("PostgresStore satisfies the Store contract", "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys_test::run_store_contract([&] {
    return std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make()));
  });
}

TEST_CASE("PostgresStore keeps a change log of revokes and deletes", "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  apikeys_test::run_change_log_contract(
      [&] { return std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make())); },
      apikeys::PostgresStore::kChangeLogSize);
}

TEST_CASE("PostgresStore: instances on one schema share keys and the revision",
          "[servers][postgres][store]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();
  apikeys::PostgresStore a(*pg, options_for(schema));
  apikeys::PostgresStore b(*pg, options_for(schema));
  const apikeys::Uuid alice = apikeys_test::account_id(1);

  a.insert(record(1, alice));
  a.insert(record(2, alice));
  const auto seen = b.find(apikeys_test::contract::public_key(1));
  REQUIRE(seen);
  CHECK(seen->info.key_id == apikeys_test::contract::key_id(1));
  CHECK(error_code_of([&] { b.insert(record(1, alice)); }) == ErrorCode::already_exists);

  const std::uint64_t r0 = b.revision();
  REQUIRE(a.set_status(alice, apikeys_test::contract::key_id(1), apikeys::KeyStatus::revoked));
  const std::uint64_t r1 = b.revision();
  CHECK(r1 != r0);
  REQUIRE(b.find(apikeys_test::contract::public_key(1))->info.status == apikeys::KeyStatus::revoked);
  REQUIRE(a.remove(alice, apikeys_test::contract::key_id(2)));
  CHECK(b.revision() != r1);
  CHECK_FALSE(b.find(apikeys_test::contract::public_key(2)));

  SECTION("reopening keeps the data; concurrent openers of a new schema all succeed") {
    apikeys::PostgresStore again(*pg, options_for(schema));
    CHECK(again.find(apikeys_test::contract::public_key(1)));
    const std::string fresh = janitor.make();
    std::atomic<int> failures{0};
    std::vector<std::thread> openers;
    for (int i = 0; i < 4; ++i) {
      openers.emplace_back([&] {
        try {
          apikeys::PostgresStore s(*pg, options_for(fresh));
          (void)s.list(alice);
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& t : openers) t.join();
    CHECK(failures.load() == 0);
  }
  SECTION("a bad schema name is refused before any I/O") {
    CHECK(error_code_of([&] { apikeys::PostgresStore s(*pg, options_for("bad name;")); }) ==
          ErrorCode::invalid_argument);
  }
}

TEST_CASE("PostgresStore: validation and management survive a server restart mid-run",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg || !apikeys_test::have_controls({"APIKEYS_TEST_PG_RESTART"})) return;
  SchemaJanitor janitor(*pg);
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make()));
  apikeys::KeyManager manager(store, hasher(), manager_options(std::make_shared<apikeys::MemoryCache>()));
  const apikeys::Uuid account = apikeys_test::account_id(7);

  std::vector<apikeys::CreatedKey> keys;
  for (int i = 0; i < 12; ++i) keys.push_back(manager.create(account, request("key " + std::to_string(i))));
  for (int i = 0; i < 4; ++i) manager.revoke(account, keys[static_cast<std::size_t>(i)].info.key_id);

  // Validators run throughout: a revoked key is never valid, an active one is valid
  // or (while the server is away) error, nothing else.
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::atomic<int> errors{0};
  std::atomic<int> checks{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::size_t i = static_cast<std::size_t>(t);
      while (!stop.load()) {
        const auto& k = keys[i++ % keys.size()];
        const bool revoked = (i - 1) % keys.size() < 4;
        const auto r = manager.validate(k.info.public_key, k.secret_key.reveal());
        ++checks;
        if (r.code == ValidationCode::error) {
          ++errors;
        } else if (r.code != (revoked ? ValidationCode::revoked : ValidationCode::valid)) {
          ++wrong;
        }
        std::this_thread::sleep_for(milliseconds(2));
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(300));
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_RESTART"));

  // Management recovers: pooled connections died with the server and are replaced.
  bool created = apikeys_test::eventually([&] {
    try {
      (void)manager.create(account, request("after restart"));
      return true;
    } catch (const apikeys::Error& e) {
      CHECK((e.code() == ErrorCode::busy || e.code() == ErrorCode::storage));
      return false;
    }
  }, std::chrono::seconds(20));
  CHECK(created);
  // Validation recovers for every key, cached or not.
  const bool all_ok = apikeys_test::eventually([&] {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const auto r = manager.validate(keys[i].info.public_key, keys[i].secret_key.reveal());
      if (r.code != (i < 4 ? ValidationCode::revoked : ValidationCode::valid)) return false;
    }
    return true;
  }, std::chrono::seconds(20));
  stop = true;
  for (auto& t : threads) t.join();
  CHECK(all_ok);
  CHECK(wrong.load() == 0);
  CHECK(checks.load() > 0);
  // Nothing lost: every key (and the one made after the restart) is still listed.
  CHECK(manager.list(account).size() == keys.size() + 1);
  const auto revoked = manager.revoke(account, keys[5].info.key_id);
  CHECK(revoked.status == apikeys::KeyStatus::revoked);
  CHECK(manager.validate(keys[5].info.public_key, keys[5].secret_key.reveal()).code == ValidationCode::revoked);
  WARN("PostgreSQL restart: " << checks.load() << " validations during the run, " << errors.load()
                              << " answered error while the server was away");
}

TEST_CASE("PostgresStore: server down answers error, management fails clearly, all resumes",
          "[servers][postgres][faults]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg || !apikeys_test::have_controls({"APIKEYS_TEST_PG_STOP", "APIKEYS_TEST_PG_START"})) return;
  SchemaJanitor janitor(*pg);
  auto store = std::make_shared<apikeys::PostgresStore>(*pg, options_for(janitor.make()));
  // Two validating nodes: one polling the revision (the default), one not.
  apikeys::KeyManager polling(store, hasher(), manager_options(std::make_shared<apikeys::MemoryCache>()));
  apikeys::KeyManager quiet(store, hasher(),
                            manager_options(std::make_shared<apikeys::MemoryCache>(), milliseconds(0)));
  const apikeys::Uuid account = apikeys_test::account_id(8);
  const auto cached = polling.create(account, request("cached"));
  const auto uncached = polling.create(account, request("uncached"));
  const auto gone = polling.create(account, request("revoked before the outage"));
  polling.revoke(account, gone.info.key_id);
  REQUIRE(polling.validate(cached.info.public_key, cached.secret_key.reveal()).ok());
  REQUIRE(quiet.validate(cached.info.public_key, cached.secret_key.reveal()).ok());

  bool started = true;
  struct Restart {  // bring the server back even if a REQUIRE below fails
    bool& started;
    ~Restart() {
      if (!started) (void)std::system((std::string(std::getenv("APIKEYS_TEST_PG_START")) + " >/dev/null 2>&1").c_str());
    }
  } restart{started};
  started = false;
  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_STOP"));

  // Not cached: error (fail closed), and promptly: within the configured timeouts.
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = polling.validate(uncached.info.public_key, uncached.secret_key.reveal());
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.code == ValidationCode::error);
  CHECK(took < milliseconds(2000 + 2000 + 1000));
  CHECK(quiet.validate(uncached.info.public_key, uncached.secret_key.reveal()).code == ValidationCode::error);

  // Cached as valid, without revision polling: still valid within its TTL (nobody can
  // revoke while the store is down). With polling, the validator cannot tell whether
  // keys changed, so it drops its cache at the next poll and answers error.
  CHECK(quiet.validate(cached.info.public_key, cached.secret_key.reveal()).ok());
  CHECK(apikeys_test::eventually([&] {
    return polling.validate(cached.info.public_key, cached.secret_key.reveal()).code == ValidationCode::error;
  }, std::chrono::seconds(5)));

  // Management calls fail with a clear, coded error; none of them crashes or hangs.
  for (const auto& call : std::vector<std::function<void()>>{
           [&] { (void)polling.create(account, request("during the outage")); },
           [&] { (void)polling.list(account); },
           [&] { (void)polling.revoke(account, cached.info.key_id); }}) {
    try {
      call();
      FAIL("a management call succeeded with the server down");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::busy);
      CHECK(std::string(e.what()).find("PostgresStore") != std::string::npos);
    }
  }

  REQUIRE(apikeys_test::server_control("APIKEYS_TEST_PG_START"));
  started = true;
  CHECK(apikeys_test::eventually([&] {
    return polling.validate(uncached.info.public_key, uncached.secret_key.reveal()).ok();
  }, std::chrono::seconds(20)));
  CHECK(polling.validate(cached.info.public_key, cached.secret_key.reveal()).ok());
  CHECK(polling.validate(gone.info.public_key, gone.secret_key.reveal()).code == ValidationCode::revoked);
  // Nothing lost, nothing half-done: exactly the three keys, the failed revoke not applied.
  const auto listed = polling.list(account);
  CHECK(listed.size() == 3);
  for (const auto& k : listed) {
    CHECK(k.status == (k.key_id == gone.info.key_id ? apikeys::KeyStatus::revoked : apikeys::KeyStatus::active));
  }
  const auto after = polling.create(account, request("after the outage"));
  CHECK(quiet.validate(after.info.public_key, after.secret_key.reveal()).ok());
}

TEST_CASE("PostgresStore: a last-use UPDATE waiting on a row lock never delays the revision poll",
          "[servers][postgres][revision]") {
  const auto pg = apikeys_test::test_pg();
  if (!pg) return;
  SchemaJanitor janitor(*pg);
  const std::string schema = janitor.make();

  // This node: polls the revision and flushes last use every 20 ms; its statements may
  // wait up to 10 s for a lock, far longer than the rejection may take.
  apikeys::PostgresStoreOptions so = options_for(schema);
  so.statement_timeout = milliseconds(10'000);
  auto watch = std::make_shared<apikeys_test::LastUseWatch>(std::make_shared<apikeys::PostgresStore>(*pg, so));
  apikeys::KeyManagerOptions node_opts = manager_options(std::make_shared<apikeys::MemoryCache>(), milliseconds(20));
  node_opts.validation.flush_interval = milliseconds(20);
  apikeys::KeyManager node(watch, hasher(), node_opts);
  // Another node, which revokes.
  apikeys::KeyManagerOptions other_opts;
  other_opts.validation.record_last_use = false;
  apikeys::KeyManager other(std::make_shared<apikeys::PostgresStore>(*pg, options_for(schema)), hasher(), other_opts);

  const apikeys::Uuid account = apikeys_test::account_id(11);
  const auto used = node.create(account, request("used"));
  const auto revoked = node.create(account, request("revoked elsewhere"));
  REQUIRE(node.validate(revoked.info.public_key, revoked.secret_key.reveal()).ok());  // cached
  node.validator().flush_last_use();  // its last use written: nothing queued

  // A third session locks the used key's row. Declared after the node, so it ends
  // (releasing the lock) before the node's destructor waits for its stuck write; the
  // server ends it too if the test dies holding it.
  struct Session {
    PGconn* c;
    ~Session() { PQfinish(c); }
  } holder{PQconnectdb(pg->c_str())};
  REQUIRE(PQstatus(holder.c) == CONNECTION_OK);
  const auto exec = [&](const std::string& sql) {
    PGresult* r = PQexec(holder.c, sql.c_str());
    const ExecStatusType s = PQresultStatus(r);
    std::string value = s == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    INFO(sql << ": " << PQresultErrorMessage(r));
    PQclear(r);
    REQUIRE((s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK));
    return value;
  };
  exec("SET statement_timeout = 5000; SET lock_timeout = 5000; SET idle_in_transaction_session_timeout = 30000");
  exec("BEGIN");
  exec("SELECT 1 FROM \"" + schema + "\".apikeys_keys WHERE key_id = '" + used.info.key_id.to_string() +
       "' FOR UPDATE");

  const int begun = watch->last_use_begun.load();
  const int finished = watch->last_use_finished.load();
  REQUIRE(node.validate(used.info.public_key, used.secret_key.reveal()).ok());
  REQUIRE(watch->wait_begun_beyond(begun, milliseconds(5000)));
  // The node's UPDATE is waiting on our lock, the server says (pg_locks is read afresh
  // each time; pg_stat_activity would be frozen for the rest of our transaction).
  REQUIRE(apikeys_test::eventually([&] {
    return exec("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted"
                " AND pg_backend_pid() = ANY(pg_blocking_pids(pid))") == "1";
  }, milliseconds(5000)));

  // The other node revokes the cached key; this node must reject it within many polls,
  // while its last-use write still waits.
  other.revoke(account, revoked.info.key_id);
  const auto t0 = std::chrono::steady_clock::now();
  const bool rejected = apikeys_test::eventually([&] {
    return node.validate(revoked.info.public_key, revoked.secret_key.reveal()).code == ValidationCode::revoked;
  }, milliseconds(2000));
  const auto ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t0).count();
  CHECK(rejected);
  CHECK(watch->last_use_finished.load() == finished);  // still waiting on the lock
  if (rejected) WARN("revoked on another node, rejected here after " << ms << " ms, while a last-use write waited");

  exec("ROLLBACK");
  node.validator().flush_last_use();  // after the stuck one, which now gets through
  CHECK(other.list(account).size() == 2);
  for (const auto& k : other.list(account)) CHECK(k.last_used_at.has_value());
  CHECK(node.validator().last_use_failures() == 0);
}
