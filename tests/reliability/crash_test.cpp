// Crash safety: a child process (apikeys_crash_child) creates keys in a
// SqliteStore and reports each one through a pipe after create() returned; the test
// SIGKILLs it at a random moment, 20 rounds on one database file (alternating
// durable=FULL and NORMAL). After each kill: PRAGMA integrity_check is ok, every row is
// well-formed, at most the in-flight creates are present unreported, every key ever
// reported is present and validates, and the audited changes of account 3 and their
// audit events committed together: each key has exactly one event per change; and
// account 4's refills (take_credits_audited) and their events likewise.
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "reliability_support.hpp"
#include "test_support.hpp"

using namespace apikeys;

namespace {

struct Reported {
  std::string pk;
  std::string sk;
  std::string key_id;
  std::string account;
};

// A running child whose stdout we read line by line.
class Child {
 public:
  Child(const std::string& db, bool durable) {
    std::vector<std::string> store{APIKEYS_CRASH_CHILD_PATH, db, durable ? "1" : "0"};
    std::vector<char*> argv;
    for (auto& a : store) argv.push_back(a.data());
    argv.push_back(nullptr);
    int fds[2];
    REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      if (dup2(fds[1], 1) < 0) _exit(126);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
  }
  ~Child() {
    if (fd_ >= 0) close(fd_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int st = 0;
      waitpid(pid_, &st, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Reads what is available within `timeout_ms`; false at end of file.
  bool pump(int timeout_ms) {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    const int rc = poll(&p, 1, timeout_ms);
    if (rc <= 0) return true;
    char buf[8192];
    const ssize_t n = read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) {
      close(fd_);
      fd_ = -1;
      return false;
    }
    pending_.append(buf, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = pending_.find('\n')) != std::string::npos) {
      std::istringstream line(pending_.substr(0, nl));
      Reported r;
      line >> r.pk >> r.sk >> r.key_id >> r.account;
      lines_.push_back(r);
      pending_.erase(0, nl + 1);
    }
    return true;
  }

  // SIGKILL, then drain the pipe (lines written before death) and reap. Returns the
  // wait status.
  int kill_and_reap() {
    kill(pid_, SIGKILL);
    while (pump(10'000)) {
    }
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return st;
  }

  const std::vector<Reported>& lines() const { return lines_; }
  const std::string& partial() const { return pending_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string pending_;
  std::vector<Reported> lines_;
};

// What is wrong with the refilled key (account 4) and its refill events: each event
// moves the refill period by one (the child takes a day after it), and together they
// run without a gap up to the period stored: every refill committed with its event,
// and no event without its refill. Counts the events.
std::vector<std::string> refill_mismatches(apikeys_test::RawDb& raw, std::size_t* events) {
  std::vector<std::string> problems;
  const std::string account = apikeys_test::account_id(4).to_string();
  std::vector<std::int64_t> afters;
  const std::string refill =
      std::to_string(static_cast<int>(apikeys::AuditAction::refill));  // not its create
  for (const auto& row : raw.query("SELECT before_json, after_json FROM audit_events"
                                   " WHERE account_id = '" +
                                   account + "' AND action = " + refill)) {
    const auto before = nlohmann::json::parse(row.at(0).value_or(""), nullptr, false);
    const auto after = nlohmann::json::parse(row.at(1).value_or(""), nullptr, false);
    if (!before.is_object() || !after.is_object() || !before.contains("refilled_period") ||
        !after.contains("refilled_period")) {
      problems.push_back("refill event: malformed");
      continue;
    }
    const auto from = before.at("refilled_period").get<std::int64_t>();
    const auto to = after.at("refilled_period").get<std::int64_t>();
    if (to != from + 1) problems.push_back("refill event: not one period");
    afters.push_back(to);
  }
  if (events != nullptr) *events = afters.size();
  std::sort(afters.begin(), afters.end());
  for (std::size_t i = 1; i < afters.size(); ++i) {
    if (afters[i] != afters[i - 1] + 1) problems.push_back("refill events: a gap or a repeat");
  }
  const auto stored = raw.query(
      "SELECT c.refilled_period FROM key_credits AS c JOIN api_keys AS k ON c.lineage_id ="
      " coalesce(k.lineage_id, k.key_id) WHERE k.account_id = '" +
      account + "'");
  if (stored.empty()) {
    if (!afters.empty()) problems.push_back("refill events but no credits");
  } else if (!afters.empty() && std::stoll(stored.at(0).at(0).value_or("0")) != afters.back()) {
    problems.push_back("the stored refill period is not the newest event's");
  }
  return problems;
}

// What is wrong with the audited keys (account 3) and their events: every key must have
// exactly one event per version from 1 (its create) up to its own (a change
// never commits without its event, an event never without its change), the newest
// saying the key's status; and every event must belong to a key. Counts the events.
std::vector<std::string> audit_mismatches(apikeys_test::RawDb& raw, std::size_t* events) {
  std::vector<std::string> problems;
  const std::string account = apikeys_test::account_id(3).to_string();
  std::map<std::string, std::vector<std::uint64_t>> versions;  // key -> its events' versions
  std::map<std::string, std::string> newest_status;
  std::size_t count = 0;
  for (const auto& row : raw.query("SELECT key_id, after_json, typeof(time_ms) FROM audit_events"
                                   " WHERE account_id = '" +
                                   account + "' ORDER BY rowid")) {
    ++count;
    const std::string key = row.at(0).value_or("NULL");
    const auto after = nlohmann::json::parse(row.at(1).value_or(""), nullptr, false);
    if (row.at(2).value_or("") != "integer" || !after.is_object() || !after.contains("version")) {
      problems.push_back("event of " + key + ": malformed");
      continue;
    }
    const auto version = after.at("version").get<std::uint64_t>();
    auto& seen = versions[key];
    if (seen.empty() || version > seen.back()) {
      newest_status[key] = after.value("status", std::string());
    }
    seen.push_back(version);
  }
  if (events != nullptr) *events = count;
  for (const auto& row : raw.query(
           "SELECT key_id, version, status FROM api_keys WHERE account_id = '" + account + "'")) {
    const std::string key = row.at(0).value_or("NULL");
    const std::uint64_t version = std::stoull(row.at(1).value_or("0"));
    auto found = versions.find(key);
    std::vector<std::uint64_t> got;
    if (found != versions.end()) {
      got = std::move(found->second);
      versions.erase(found);
    }
    std::sort(got.begin(), got.end());
    std::vector<std::uint64_t> want;
    for (std::uint64_t v = 1; v <= version; ++v) want.push_back(v);
    if (got != want) {
      problems.push_back("key " + key + " at version " + std::to_string(version) + " has " +
                         std::to_string(got.size()) + " events for " + std::to_string(want.size()) +
                         " audited changes");
      continue;
    }
    const bool revoked = row.at(2).value_or("") == "1";
    if (!got.empty() && (newest_status[key] == "revoked") != revoked) {
      problems.push_back("key " + key + ": its newest event says " + newest_status[key]);
    }
  }
  for (const auto& orphan : versions) {
    problems.push_back("key " + orphan.first + " has events but no row");
  }
  return problems;
}

}  // namespace

TEST_CASE("crash: SIGKILL at random moments loses no created key and leaves no half-written row",
          "[crash]") {
  constexpr int kRounds = 20;
  apikeys_test::TempDir dir;
  const std::string db = dir.file("crash.db");
  const unsigned seed = std::random_device{}();
  std::cout << "crash: seed " << seed << "\n";
  std::mt19937 rng(seed);

  std::vector<Reported> reported;  // every key any child reported, all rounds
  std::set<std::string> reported_ids;
  std::size_t unreported_account1 = 0;  // committed but killed before reporting
  std::size_t churn_left = 0;           // churn keys killed before their delete
  std::size_t audit_events = 0;         // account 3's audit events after the last round
  std::size_t refill_events = 0;        // account 4's refill events after the last round
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);

  for (int round = 0; round < kRounds; ++round) {
    const bool durable = round % 2 == 0;
    std::size_t this_round = 0;
    std::string how;
    int status = 0;
    std::string partial;
    {
      Child child(db, durable);
      const auto start = std::chrono::steady_clock::now();
      if (round % 4 < 2) {
        // Kill after a random time since spawn: sometimes before the database is even
        // open, sometimes during the schema migration, mostly mid-create.
        const auto delay = std::chrono::microseconds(rng() % 250'000);
        how = "after " + std::to_string(delay.count()) + " us";
        while (std::chrono::steady_clock::now() - start < delay && child.pump(1)) {
        }
      } else {
        // Kill a random moment after the K-th report, K random.
        const std::size_t k = 1 + rng() % 40;
        const auto extra = std::chrono::microseconds(rng() % 3000);
        how = "after report " + std::to_string(k) + " + " + std::to_string(extra.count()) + " us";
        const auto limit = start + std::chrono::seconds(30);
        while (child.lines().size() < k && std::chrono::steady_clock::now() < limit &&
               child.pump(5)) {
        }
        const auto t = std::chrono::steady_clock::now();
        while (std::chrono::steady_clock::now() - t < extra && child.pump(0)) {
        }
      }
      status = child.kill_and_reap();
      partial = child.partial();
      for (const auto& r : child.lines()) {
        reported.push_back(r);
        reported_ids.insert(r.key_id);
      }
      this_round = child.lines().size();
    }
    std::cout << "crash: round " << round << " durable=" << durable << " killed " << how << ": "
              << this_round << " reported (" << reported.size() << " total)\n";
    // Killed by us, or (rarely) finished on its own; never a failure it noticed itself.
    CHECK(((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ||
           (WIFEXITED(status) && WEXITSTATUS(status) == 0)));
    CHECK(partial.empty());  // reports are single atomic writes

    if (::access(db.c_str(), F_OK) == 0) {
      // Read-write: a kill inside the first transaction (it creates the schema before the
      // file turns to WAL) leaves a hot journal that the next opener rolls back.
      REQUIRE(apikeys_test::integrity_check(db, SQLITE_OPEN_READWRITE) == "ok");
      apikeys_test::RawDb raw(db);
      const std::string tables = raw.scalar(
          "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('api_keys', 'apikeys_meta')");
      if (tables == "2") {
        std::size_t rows = 0;
        const auto problems = apikeys_test::malformed_rows(raw, &rows);
        for (const auto& p : problems) std::cerr << "crash: half-written row: " << p << "\n";
        CHECK(problems.empty());
        CHECK(raw.scalar("SELECT count(*) FROM apikeys_meta") == "1");
        // Rows the test never heard of: only creates in flight at the kill (two
        // reporting threads) may have committed unreported.
        std::size_t account1 = 0;
        for (const auto& row : raw.query("SELECT key_id FROM api_keys WHERE account_id = '" +
                                         apikeys_test::account_id(1).to_string() + "'")) {
          ++account1;
          (void)row;
        }
        REQUIRE(account1 >= reported.size());
        const std::size_t unreported_now = account1 - reported.size();
        CHECK(unreported_now >= unreported_account1);
        CHECK(unreported_now - unreported_account1 <= 2);
        unreported_account1 = unreported_now;
        const std::size_t churn_now =
            std::stoul(raw.scalar("SELECT count(*) FROM api_keys WHERE account_id = '" +
                                  apikeys_test::account_id(2).to_string() + "'"));
        CHECK(churn_now <= churn_left + 1);
        churn_left = churn_now;
        const std::size_t audited_keys =
            std::stoul(raw.scalar("SELECT count(*) FROM api_keys WHERE account_id = '" +
                                  apikeys_test::account_id(3).to_string() + "'"));
        const std::size_t refilled_keys =
            std::stoul(raw.scalar("SELECT count(*) FROM api_keys WHERE account_id = '" +
                                  apikeys_test::account_id(4).to_string() + "'"));
        CHECK(refilled_keys <= 1);
        CHECK(rows == account1 + churn_now + audited_keys + refilled_keys);
        // Every audited change committed with its event, and no event without its change.
        // Killed mid-migration, the file may not have the table yet: then no store opened
        // it, and there is nothing audited.
        if (raw.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name ="
                       " 'audit_events'") == "1") {
          std::size_t events = 0;
          const auto mismatches = audit_mismatches(raw, &events);
          for (const auto& m : mismatches) std::cerr << "crash: audit: " << m << "\n";
          CHECK(mismatches.empty());
          CHECK(events >= audit_events);  // nothing committed is ever lost
          audit_events = events;
          std::size_t refills = 0;
          const auto refill_problems = refill_mismatches(raw, &refills);
          for (const auto& m : refill_problems) std::cerr << "crash: refill: " << m << "\n";
          CHECK(refill_problems.empty());
          CHECK(refills >= refill_events);
          refill_events = refills;
        } else {
          CHECK(audited_keys == 0);
          CHECK(audit_events == 0);
        }
      } else {
        CHECK(reported.empty());  // nothing was created before the schema existed
      }
    } else {
      CHECK(reported.empty());
    }

    // Reopen through the library: every reported key is there and validates.
    auto store = std::make_shared<SqliteStore>(db);
    KeyManagerOptions mo;
    mo.validation.record_last_use = false;
    KeyManager m(store, hasher, mo);
    std::size_t bad = 0;
    for (const auto& r : reported) {
      const auto v = m.validate(r.pk, r.sk);
      if (!v.ok() || v.key_id.to_string() != r.key_id || v.account_id.to_string() != r.account) {
        if (++bad <= 5)
          std::cerr << "crash: reported key " << r.key_id << " answers " << to_string(v.code)
                    << "\n";
      }
    }
    CHECK(bad == 0);
    CHECK(m.list(apikeys_test::account_id(1)).size() == reported.size() + unreported_account1);
    std::cout << "crash: round " << round << " verified: integrity ok, " << reported.size()
              << " reported keys valid\n";
  }
  std::cout << "crash: " << kRounds << " rounds, " << reported.size()
            << " reported keys all present and valid, " << unreported_account1
            << " committed-unreported, " << churn_left << " churn leftovers, " << audit_events
            << " audit events each with its change, " << refill_events
            << " refills each with its event\n";
  CHECK(reported.size() >= 20);  // the kills did not all land before the first create
}
