// The validator's revision poll (which drops cached verdicts when another process
// revoked a key) keeps its pace while a last-use write is stuck: behind a store double
// whose record_last_use() is held, and on a SQLite file whose write lock another
// connection holds (the write waits in SQLite's busy timeout). The PostgreSQL form (a
// row lock held by another session) is in postgres_store_test.cpp.
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "reliability_support.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;
using apikeys_test::InstrumentedStore;
using apikeys_test::LastUseWatch;
using std::chrono::milliseconds;

namespace {

// How long a revoke made elsewhere may take to be rejected here: many polls (20 ms
// each), far less than the stuck write's wait.
constexpr milliseconds kRejectWithin{2000};

// The node under test: polls the revision and flushes last use every 20 ms.
KeyManagerOptions node_options(std::shared_ptr<Clock> clock = nullptr) {
  KeyManagerOptions o;
  MemoryCacheOptions co;
  co.clock = clock;
  o.validation.cache = std::make_shared<MemoryCache>(co);
  o.validation.clock = std::move(clock);
  o.validation.record_last_use = true;
  o.validation.revision_poll_interval = milliseconds(20);
  o.validation.flush_interval = milliseconds(20);
  return o;
}

CreatedKey make_key(KeyManager& m, const char* title) {
  CreateRequest r;
  r.title = title;
  return m.create(apikeys_test::account_id(1), r);
}

// Validates `k` every 20 ms until it is no longer valid or `limit` passes; the last code.
ValidationCode code_within(KeyManager& m, const CreatedKey& k, milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const ValidationCode c = m.validate(k.info.public_key, k.secret_key.reveal()).code;
    if (c != ValidationCode::valid || std::chrono::steady_clock::now() >= end) return c;
    std::this_thread::sleep_for(milliseconds(20));
  }
}

}  // namespace

TEST_CASE("a stuck last-use write never delays the revision poll", "[validator][revision]") {
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  auto inner = std::make_shared<InstrumentedStore>();
  auto watch = std::make_shared<LastUseWatch>(inner);
  KeyManager node(watch, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                  node_options(clock));
  // Lets the held write go even when a REQUIRE below fails (the validator's destructor
  // waits for it).
  struct Release {
    LastUseWatch& w;
    ~Release() { w.release_last_use(); }
  } release{*watch};

  const auto used = make_key(node, "used");
  const auto revoked = make_key(node, "revoked elsewhere");
  watch->hold_last_use();
  REQUIRE(node.validate(revoked.info.public_key, revoked.secret_key.reveal()).ok());  // cached
  REQUIRE(node.validate(used.info.public_key, used.secret_key.reveal()).ok());
  REQUIRE(watch->wait_begun_beyond(0, milliseconds(5000)));  // a flush is stuck in the store

  // Another process revokes the cached key: only the revision poll can tell this node.
  REQUIRE(
      inner->inner.set_status(revoked.info.account_id, revoked.info.key_id, KeyStatus::revoked));
  CHECK(node.validate(revoked.info.public_key, revoked.secret_key.reveal()).ok());  // still cached
  inner->rev += 1;

  CHECK(code_within(node, revoked, kRejectWithin) == ValidationCode::revoked);
  CHECK(watch->last_use_finished.load() == 0);  // the flush was stuck all along

  // Released, the held batch is written: nothing was lost while it waited.
  watch->release_last_use();
  node.validator().flush_last_use();
  CHECK(watch->last_use_finished.load() >= 1);
  CHECK(inner->last_use_entries.load() == 2);
  CHECK(inner->inner.find(used.info.public_key)->info.last_used_at.has_value());
  CHECK(node.validator().last_use_failures() == 0);
}

TEST_CASE("SQLite: a last-use write waiting on the file's lock never delays the revision poll",
          "[validator][revision][sqlite]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("keys.db");
  SqliteStoreOptions so;
  so.busy_timeout = milliseconds(10'000);  // the stuck write waits this long
  auto watch = std::make_shared<LastUseWatch>(std::make_shared<SqliteStore>(path, so));
  KeyManager node(watch, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                  node_options());

  // Another process's connection, holding the write lock whenever it is not committing.
  // Declared after the node, so it closes (rolling back, letting the stuck write go)
  // before the node's destructor waits for that write.
  apikeys_test::RawDb other(path);

  // The rejection must come while this node's flush provably waits: it has begun, the
  // lock is ours again right after the revoke's commit (taken with no wait: the default
  // busy timeout of a raw connection is 0), and the used key's last use is not written.
  // The flush's busy handler could, rarely, retry inside that gap and get the lock: the
  // round then proves nothing and runs again with new keys.
  const auto last_use_written = [&](const CreatedKey& k) {
    return other.scalar("SELECT last_used_at IS NOT NULL FROM api_keys WHERE key_id = '" +
                        k.info.key_id.to_string() + "'") == "1";
  };
  bool proved = false;
  for (int round = 0; round < 3 && !proved; ++round) {
    const auto used = make_key(node, "used");
    const auto revoked = make_key(node, "revoked elsewhere");
    REQUIRE(node.validate(revoked.info.public_key, revoked.secret_key.reveal()).ok());  // cached
    node.validator().flush_last_use();  // its last use written: nothing queued

    other.exec("BEGIN IMMEDIATE");
    const int begun = watch->last_use_begun.load();
    REQUIRE(node.validate(used.info.public_key, used.secret_key.reveal()).ok());
    REQUIRE(watch->wait_begun_beyond(begun, milliseconds(5000)));  // waiting on our lock
    // Past SQLite's short first retries: its busy handler now sleeps 100 ms at a time.
    std::this_thread::sleep_for(milliseconds(500));

    // Revoke as SqliteStore does (status and revision in one transaction), commit, and
    // take the lock back at once.
    other.exec(
        "UPDATE api_keys SET status = " + std::to_string(static_cast<int>(KeyStatus::revoked)) +
        " WHERE key_id = '" + revoked.info.key_id.to_string() + "'");
    other.exec("UPDATE apikeys_meta SET revision = revision + 1 WHERE id = 1");
    other.exec("COMMIT");
    const int relocked = other.try_exec("BEGIN IMMEDIATE");
    if (relocked != SQLITE_OK || last_use_written(used)) {
      if (relocked == SQLITE_OK) other.exec("ROLLBACK");
      node.validator().flush_last_use();  // whatever it was doing is done
      WARN("round " << round + 1
                    << ": the stuck flush took the lock between commit and re-lock; again");
      continue;
    }
    proved = true;

    CHECK(code_within(node, revoked, kRejectWithin) == ValidationCode::revoked);
    CHECK_FALSE(last_use_written(used));  // the flush still waits on our lock

    other.exec("ROLLBACK");
    node.validator().flush_last_use();  // after the stuck one, which now gets through
    CHECK(last_use_written(used));
  }
  CHECK(proved);
  CHECK(node.validator().last_use_failures() == 0);
}
