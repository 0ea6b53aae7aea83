// Credits on one SQLite file shared by several processes: each charge is one guarded
// UPDATE in its own write transaction, so however many processes validate one key, the
// admissions never exceed its balance. The other processes are
// apikeys_sqlite_credits_child (a KeyManager validating one token many times, with or
// without leases) and the command-line tool's `verify`.
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "process_support.hpp"
#include "temp_dir.hpp"
#include "test_support.hpp"

#include "../../src/hex.hpp"

extern char** environ;

using namespace apikeys;

namespace {

const Uuid kAccount = *Uuid::parse("3c1f7a52-9e0b-4d2c-8a61-5b7e0f2d9c44");

// A key with `credits` (no refill) created in the SQLite file at `path`, hashed with
// `pepper`; its token.
std::string metered_key(const std::string& path, std::uint64_t credits,
                        std::string_view pepper = apikeys_test::kTestPepper) {
  auto store = std::make_shared<SqliteStore>(path);
  KeyManagerOptions options;
  options.validation.record_last_use = false;
  KeyManager manager(store, std::make_shared<HmacSha256Hasher>(std::string(pepper)), options);
  CreateRequest request("metered");
  Credits c;
  c.remaining = credits;
  request.credits = c;
  const CreatedKey key = manager.create(kAccount, request);
  return key.info.public_key + ":" + std::string(key.secret_key.reveal());
}

// The stored balance of the only key's lineage.
std::uint64_t balance(const std::string& path) {
  SqliteStore store(path);
  const std::vector<KeyInfo> keys = store.list(kAccount);
  REQUIRE(keys.size() == 1);
  REQUIRE(keys[0].credits);
  return keys[0].credits->remaining;
}

std::vector<std::string> environment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  return env;
}

// With `hold`, the child keeps its leases after its last attempt until killed (or its
// stdin closes): see apikeys_sqlite_credits_child.
apikeys_test::StartedProgram start_child(const std::string& path, const std::string& token,
                                         std::uint64_t lease, std::uint64_t attempts,
                                         bool hold = false) {
  std::vector<std::string> args{APIKEYS_CREDITS_CHILD_PATH, path, token, std::to_string(lease),
                                std::to_string(attempts)};
  if (hold) args.emplace_back("hold");
  return apikeys_test::start_program(args, environment());
}

std::uint64_t admitted(const apikeys_test::ProgramRun& run) {
  return static_cast<std::uint64_t>(std::count(run.out.begin(), run.out.end(), 'a'));
}

}  // namespace

TEST_CASE("Two processes charging one key's credits admit exactly the balance",
          "[admission][sqlite][process]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("credits.db");
  constexpr std::uint64_t kCredits = 200;
  const std::string token = metered_key(path, kCredits);
  auto a = start_child(path, token, 0, 3 * kCredits);
  auto b = start_child(path, token, 0, 3 * kCredits);
  const apikeys_test::ProgramRun ra = apikeys_test::finish_program(a);
  const apikeys_test::ProgramRun rb = apikeys_test::finish_program(b);
  INFO(ra.err << rb.err);
  REQUIRE(ra.code == 0);
  REQUIRE(rb.code == 0);
  CHECK(admitted(ra) + admitted(rb) == kCredits);
  CHECK(balance(path) == 0);
}

TEST_CASE("Leased credits across processes: never more than the balance, the rest returned",
          "[admission][sqlite][process]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("leases.db");
  constexpr std::uint64_t kCredits = 300;
  constexpr std::uint64_t kLease = 25;
  const std::string token = metered_key(path, kCredits);

  SECTION("both exit in order: admitted + remaining == the balance") {
    // Fewer attempts than credits between them: both end holding a lease's rest.
    auto a = start_child(path, token, kLease, 110);
    auto b = start_child(path, token, kLease, 110);
    const apikeys_test::ProgramRun ra = apikeys_test::finish_program(a);
    const apikeys_test::ProgramRun rb = apikeys_test::finish_program(b);
    INFO(ra.err << rb.err);
    REQUIRE(ra.code == 0);
    REQUIRE(rb.code == 0);
    CHECK(admitted(ra) + admitted(rb) == 220);
    CHECK(admitted(ra) + admitted(rb) + balance(path) == kCredits);
  }

  SECTION("far more attempts than credits: never more than the balance") {
    auto a = start_child(path, token, kLease, 3 * kCredits);
    auto b = start_child(path, token, kLease, 3 * kCredits);
    const apikeys_test::ProgramRun ra = apikeys_test::finish_program(a);
    const apikeys_test::ProgramRun rb = apikeys_test::finish_program(b);
    INFO(ra.err << rb.err);
    REQUIRE(ra.code == 0);
    REQUIRE(rb.code == 0);
    CHECK(admitted(ra) + admitted(rb) + balance(path) == kCredits);
    CHECK(admitted(ra) + admitted(rb) == kCredits);  // the leases were drawn down to 0
  }

  SECTION("one killed mid-run loses at most its lease") {
    // `a` holds its lease after its attempts, so it is killed holding one however early
    // it finishes (a loaded machine may run all its attempts before the kill).
    auto a = start_child(path, token, kLease, 3 * kCredits, true);
    auto b = start_child(path, token, kLease, 3 * kCredits);
    // Kill `a` once the balance has started to move (it holds a lease by then, or soon).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (balance(path) == kCredits && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    REQUIRE(kill(a.pid, SIGKILL) == 0);
    const apikeys_test::ProgramRun ra = apikeys_test::finish_program(a);
    const apikeys_test::ProgramRun rb = apikeys_test::finish_program(b);
    INFO(rb.err);
    CHECK(ra.code == 128 + SIGKILL);
    REQUIRE(rb.code == 0);
    const std::uint64_t total = admitted(ra) + admitted(rb);
    CHECK(total <= kCredits);
    CHECK(total >= kCredits - kLease);
    CHECK(total + balance(path) <= kCredits);
  }
}

#if defined(APIKEYS_CLI_PATH)
TEST_CASE("Concurrent `apikeys verify` processes admit exactly the balance",
          "[admission][sqlite][process][cli]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("cli.db");
  const std::string pepper_hex = "00112233445566778899aabbccddeeff0123456789abcdef0123456789abcdef";
  const std::optional<std::string> pepper = detail::hex_decode(pepper_hex);
  REQUIRE(pepper);
  constexpr std::uint64_t kCredits = 10;
  const std::string token = metered_key(path, kCredits, *pepper);
  const std::vector<std::string> env{"APIKEYS_PEPPER=" + pepper_hex};
  constexpr int kProcesses = 4;
  constexpr int kRounds = 4;
  int valid = 0;
  int exhausted = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<apikeys_test::StartedProgram>> runs;
    for (int i = 0; i < kProcesses; ++i) {
      runs.emplace_back(new apikeys_test::StartedProgram(
          apikeys_test::start_program({APIKEYS_CLI_PATH, "--db", path, "verify", token}, env)));
    }
    for (auto& run : runs) {
      const apikeys_test::ProgramRun r = apikeys_test::finish_program(*run);
      INFO(r.out << r.err);
      if (r.code == 0) {
        ++valid;
      } else {
        CHECK(r.out.find("\"usage_exceeded\"") != std::string::npos);
        ++exhausted;
      }
    }
  }
  CHECK(valid == static_cast<int>(kCredits));
  CHECK(exhausted == kProcesses * kRounds - static_cast<int>(kCredits));
  CHECK(balance(path) == 0);
}
#endif

namespace {

// Another connection to the file holding its write lock (BEGIN IMMEDIATE) until release().
class WriteLockHolder {
 public:
  explicit WriteLockHolder(const std::string& path) {
    REQUIRE(sqlite3_open(path.c_str(), &db_) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  ~WriteLockHolder() { sqlite3_close(db_); }
  WriteLockHolder(const WriteLockHolder&) = delete;
  WriteLockHolder& operator=(const WriteLockHolder&) = delete;
  void release() { REQUIRE(sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK); }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace

TEST_CASE("A charge blocked past the busy timeout is a limiter failure, by the policy",
          "[admission][sqlite]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("busy.db");
  const std::string token = metered_key(path, 5);
  SqliteStoreOptions store_options;
  store_options.busy_timeout = std::chrono::milliseconds(50);
  auto store = std::make_shared<SqliteStore>(path, store_options);
  const bool allow = GENERATE(false, true);
  KeyManagerOptions options;
  options.validation.record_last_use = false;
  options.validation.limiter_failure =
      allow ? LimiterFailurePolicy::allow : LimiterFailurePolicy::deny;
  KeyManager manager(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), options);
  REQUIRE(manager.validate(token).credits_remaining == std::optional<std::uint64_t>(4));

  WriteLockHolder holder(path);
  CHECK_THROWS_AS(
      store->take_credits(manager.list(kAccount)[0].lineage(), 1, 1, from_unix_millis(0)), Error);
  const ValidationResult r = manager.validate(token);
  CHECK(r.limiter_failed);
  CHECK(r.code == (allow ? ValidationCode::valid : ValidationCode::error));
  CHECK(manager.validator().limiter_failures() == 1);
  holder.release();
  // Nothing was spent by the failed charge, whatever the policy answered.
  CHECK(manager.validate(token).credits_remaining == std::optional<std::uint64_t>(3));
  CHECK(balance(path) == 3);
}

TEST_CASE("A read-only SqliteStore refuses credit writes as not supported", "[admission][sqlite]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("ro.db");
  (void)metered_key(path, 5);
  SqliteStoreOptions options;
  options.read_only = true;
  SqliteStore store(path, options);
  const KeyInfo key = store.list(kAccount).at(0);
  REQUIRE(key.credits);
  const auto code_of = [](auto&& f) -> std::optional<ErrorCode> {
    try {
      f();
    } catch (const Error& e) {
      return e.code();
    }
    return std::nullopt;
  };
  CHECK(code_of([&] { (void)store.take_credits(key.lineage(), 1, 1, from_unix_millis(0)); }) ==
        ErrorCode::not_supported);
  CHECK(code_of([&] { store.return_credits(key.lineage(), 1, 0); }) == ErrorCode::not_supported);
  CreditsChange change;
  change.remaining = 9;
  CHECK(code_of([&] { (void)store.change_credits(kAccount, key.key_id, change); }) ==
        ErrorCode::not_supported);
  CHECK(balance(path) == 5);
}

TEST_CASE("SqliteStore fails closed on admission columns it cannot read", "[admission][sqlite]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("corrupt.db");
  const std::string token = metered_key(path, 5);
  const std::string public_key = token.substr(0, token.find(':'));
  const char* bad[] = {
      "UPDATE api_keys SET rate_limits = 'per-minute=100/60000'",   // a field short
      "UPDATE api_keys SET rate_limits = 'per-minute=100/500/0'",   // period below 1 s
      "UPDATE api_keys SET rate_limits = 'a=1/1000/0;a=2/1000/0'",  // duplicate names
      "UPDATE api_keys SET rate_limits = 'Bad=1/1000/0'",           // not a name
      "UPDATE api_keys SET rate_limits = 'a=1/1000/0;'",            // an empty limit
      "UPDATE api_keys SET lineage_id = 'not-a-uuid'",
      "UPDATE key_credits SET refill_amount = 5, refill_interval = 7",
      "UPDATE key_credits SET remaining = -1",
  };
  for (const char* sql : bad) {
    INFO(sql);
    {
      sqlite3* db = nullptr;
      REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
      REQUIRE(sqlite3_exec(db, "SAVEPOINT s", nullptr, nullptr, nullptr) == SQLITE_OK);
      REQUIRE(sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK);
      REQUIRE(sqlite3_exec(db, "RELEASE s", nullptr, nullptr, nullptr) == SQLITE_OK);
      sqlite3_close(db);
    }
    SqliteStore store(path);
    bool failed = false;
    try {
      (void)store.list(kAccount);
    } catch (const Error& e) {
      failed = e.code() == ErrorCode::storage;
    }
    CHECK(failed);
    if (std::string(sql).find("api_keys") != std::string::npos) {
      CHECK_THROWS_AS(store.find(public_key), Error);
    }
    // Back to good values for the next case.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db,
                         "UPDATE api_keys SET rate_limits = '', lineage_id = key_id;"
                         " UPDATE key_credits SET remaining = 5, refill_amount = NULL,"
                         " refill_interval = 0",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  CHECK(SqliteStore(path).list(kAccount).at(0).credits->remaining == 5);
}
