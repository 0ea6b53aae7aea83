// Policy changes made by another process on the same SQLite file reach this process's
// cached verdicts through the revision poll alone: a removed scope stops being granted,
// a disabled key stops validating, and a rotation with no grace ends the old key. The
// other process is apikeys_sqlite_policy_child, which changes the key through its own
// KeyManager and exits; nothing in this process is told.
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "process_support.hpp"
#include "temp_dir.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace apikeys;
using std::chrono::milliseconds;

namespace {

// The node's revision poll interval, and how long a change made elsewhere may take to
// show here: many polls, far less than any cache lifetime (ttl_valid is 120 s).
constexpr milliseconds kPollInterval{20};
constexpr milliseconds kShowWithin{2000};

// A cache that keeps whole verdicts (scopes and metadata included) until erased, and
// counts the verdicts it served: the test proves the node answered from its cache before
// the change, so only the revision poll can have told it. Fill tokens are one counter
// that every erase and clear moves (a fill that raced one is dropped).
class VerdictCache final : public Cache {
 public:
  std::optional<Verdict> get(std::string_view public_key, const Digest& presented) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(public_key);
    if (it == entries_.end() || it->second.digest.bytes != presented.bytes ||
        it->second.digest.pepper_id != presented.pepper_id) {
      return std::nullopt;
    }
    ++hits_;
    return it->second.verdict;
  }
  std::uint64_t fill_token(std::string_view /*public_key*/) override {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }
  void put(std::string_view public_key, const Digest& presented, const Verdict& verdict,
           std::chrono::milliseconds /*ttl*/, std::uint64_t token) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (token != generation_) return;
    entries_[std::string(public_key)] = Entry{presented, verdict};
  }
  void erase(std::string_view public_key) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    const auto it = entries_.find(public_key);
    if (it != entries_.end()) entries_.erase(it);
  }
  void clear() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    entries_.clear();
  }
  int hits() {
    std::lock_guard<std::mutex> lock(mu_);
    return hits_;
  }

 private:
  struct Entry {
    Digest digest;
    Verdict verdict;
  };
  std::mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::uint64_t generation_ = 0;
  int hits_ = 0;
};

KeyManagerOptions node_options(std::shared_ptr<Cache> cache) {
  KeyManagerOptions o;
  o.validation.cache = std::move(cache);
  o.validation.record_last_use = false;
  o.validation.revision_poll_interval = kPollInterval;
  return o;
}

// Runs the child on `path` to apply `op` to `key`; it must succeed.
void change_elsewhere(const std::string& path, const KeyInfo& key, const std::string& op) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  const apikeys_test::ProgramRun run = apikeys_test::run_program(
      {APIKEYS_POLICY_CHILD_PATH, path, key.account_id.to_string(), key.key_id.to_string(), op},
      env);
  INFO(run.err);
  REQUIRE(run.code == 0);
  REQUIRE(run.out == "done\n");
}

// Validates `k` (with `required` scopes) every few ms until the code is no longer
// `from` or `limit` passes; the last code.
ValidationCode code_after(KeyManager& m, const CreatedKey& k, const Requirements& required,
                          ValidationCode from, milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const ValidationCode c =
        m.validator().validate(k.info.public_key, k.secret_key.reveal(), required).code;
    if (c != from || std::chrono::steady_clock::now() >= end) return c;
    std::this_thread::sleep_for(milliseconds(5));
  }
}

}  // namespace

TEST_CASE("SQLite: another process's policy change reaches cached verdicts by the revision poll",
          "[validator][revision][sqlite]") {
  apikeys_test::TempDir dir;
  const std::string path = dir.file("keys.db");
  auto store = std::make_shared<SqliteStore>(path);
  auto cache = std::make_shared<VerdictCache>();
  KeyManager node(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                  node_options(cache));
  // The verdict of `k` is cached: a second validation is answered by the cache.
  const auto cached = [&](const CreatedKey& k, const Requirements& required) {
    REQUIRE(node.validator().validate(k.info.public_key, k.secret_key.reveal(), required).ok());
    const int before = cache->hits();
    REQUIRE(node.validator().validate(k.info.public_key, k.secret_key.reveal(), required).ok());
    REQUIRE(cache->hits() == before + 1);
  };
  const Uuid account = apikeys_test::account_id(1);
  const Requirements write{{"orders.write"}};
  const Requirements none{};

  SECTION("a removed scope stops being granted") {
    const CreatedKey k = node.create(
        account, CreateRequest("scoped", {}, std::nullopt, {}, {"orders.read", "orders.write"}));
    cached(k, write);
    change_elsewhere(path, k.info, "scopes=orders.read");
    const auto result = code_after(node, k, write, ValidationCode::valid, kShowWithin);
    CHECK(result == ValidationCode::insufficient_scope);
    // The scope kept is still granted.
    CHECK(node.validator()
              .validate(k.info.public_key, k.secret_key.reveal(), Requirements{{"orders.read"}})
              .ok());
  }

  SECTION("a disabled key stops validating") {
    const CreatedKey k = node.create(account, CreateRequest("to disable"));
    cached(k, none);
    change_elsewhere(path, k.info, "disable");
    CHECK(code_after(node, k, none, ValidationCode::valid, kShowWithin) ==
          ValidationCode::disabled);
  }

  SECTION("a rotation with no grace ends the old key") {
    const CreatedKey k = node.create(account, CreateRequest("to rotate", {}, 30));
    cached(k, none);
    change_elsewhere(path, k.info, "rotate");
    CHECK(code_after(node, k, none, ValidationCode::valid, kShowWithin) == ValidationCode::expired);
    const auto old_key = store->get(account, k.info.key_id);
    REQUIRE(old_key);
    CHECK(old_key->rotated_to.has_value());
    CHECK(old_key->version == 2);
  }
}
