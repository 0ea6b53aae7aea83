// A program that uses apikeys the way an application does, linked against an installed
// (static or shared) library, the source tree, or pkg-config flags. It also subclasses
// Store and Cache and catches apikeys::Error, which only work against a shared library
// whose classes are exported whole (vtables and typeinfo). Exit status 0: all is well.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <apikeys/apikeys.hpp>
#if defined(APIKEYS_HAS_POSTGRES)
#include <apikeys/postgres_store.hpp>
#endif
#if defined(APIKEYS_HAS_REDIS)
#include <apikeys/redis_cache.hpp>
#include <apikeys/redis_limiter.hpp>
#endif

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << '\n';
  if (!ok) ++failures;
}

// A user-written Store: forwards to a MemoryStore and counts lookups. Linking it needs
// Store's vtable and typeinfo from the library.
class CountingStore final : public apikeys::Store {
 public:
  void insert(const apikeys::KeyRecord& record) override { inner_.insert(record); }
  std::optional<apikeys::KeyRecord> find(std::string_view public_key) override {
    ++finds;
    return inner_.find(public_key);
  }
  std::vector<apikeys::KeyInfo> list(const apikeys::Uuid& account_id) override {
    return inner_.list(account_id);
  }
  std::optional<apikeys::KeyInfo> set_status(const apikeys::Uuid& account_id,
                                             const apikeys::Uuid& key_id,
                                             apikeys::KeyStatus status) override {
    return inner_.set_status(account_id, key_id, status);
  }
  std::optional<apikeys::KeyInfo> remove(const apikeys::Uuid& account_id,
                                         const apikeys::Uuid& key_id) override {
    return inner_.remove(account_id, key_id);
  }
  void record_last_use(const std::vector<apikeys::LastUse>& uses) override {
    inner_.record_last_use(uses);
  }

  std::atomic<int> finds{0};

 private:
  apikeys::MemoryStore inner_;
};

// A user-written Cache: forwards to a MemoryCache and counts lookups and fills. Linking
// it needs Cache's vtable and typeinfo from the library.
class CountingCache final : public apikeys::Cache {
 public:
  std::optional<apikeys::Verdict> get(std::string_view public_key,
                                      const apikeys::Digest& presented) override {
    ++gets;
    return inner_.get(public_key, presented);
  }
  std::uint64_t fill_token(std::string_view public_key) override {
    return inner_.fill_token(public_key);
  }
  void put(std::string_view public_key, const apikeys::Digest& presented,
           const apikeys::Verdict& verdict, std::chrono::milliseconds ttl,
           std::uint64_t token) override {
    ++puts;
    inner_.put(public_key, presented, verdict, ttl, token);
  }
  void erase(std::string_view public_key) override { inner_.erase(public_key); }
  void clear() override { inner_.clear(); }

  std::atomic<int> gets{0};
  std::atomic<int> puts{0};

 private:
  apikeys::MemoryCache inner_;
};

}  // namespace

int main() {
  std::cout << "apikeys " << apikeys::version() << " (headers " << APIKEYS_VERSION_STRING << ")\n";
  expect(std::string_view(apikeys::version()) == APIKEYS_VERSION_STRING,
         "library and headers have the same version");

  std::string pepper;
  apikeys::append_random_base62(pepper, 43);
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(pepper);
  auto store = std::make_shared<apikeys::MemoryStore>();
  apikeys::KeyManager manager(store, hasher);

  const apikeys::Uuid account = apikeys::Uuid::random();
  apikeys::CreateRequest request;
  request.title = "consumer";
  const apikeys::CreatedKey key = manager.create(account, request);
  const std::string token = key.info.public_key + ":" + std::string(key.secret_key.reveal());

  const apikeys::ValidationResult ok =
      manager.validate(key.info.public_key, key.secret_key.reveal());
  expect(ok.ok() && ok.account_id == account && ok.key_id == key.info.key_id,
         "a new key validates, with its account and key id");
  expect(manager.validate(token).ok(), "the pk_...:sk_... token form validates");
  std::string wrong(key.secret_key.reveal());
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  expect(manager.validate(key.info.public_key, wrong).code == apikeys::ValidationCode::wrong_secret,
         "a wrong secret is refused");
  expect(manager.validate("not a key").code == apikeys::ValidationCode::malformed,
         "a malformed token is refused");
  expect(manager.list(account).size() == 1, "list shows the key");

  manager.revoke(account, key.info.key_id);
  expect(manager.validate(token).code == apikeys::ValidationCode::revoked,
         "a revoked key is refused at once");

  bool caught = false;
  try {
    manager.revoke(account, apikeys::Uuid::random());
  } catch (const apikeys::Error& e) {
    caught = e.code() == apikeys::ErrorCode::not_found;
  }
  expect(caught, "apikeys::Error(not_found) is caught by type across the library boundary");

  auto counting = std::make_shared<CountingStore>();
  auto cache = std::make_shared<CountingCache>();
  apikeys::KeyManagerOptions options;
  options.validation.cache = cache;
  apikeys::KeyManager custom(counting, hasher, options);
  const apikeys::CreatedKey other = custom.create(account, request);
  expect(custom.validate(other.info.public_key, other.secret_key.reveal()).ok() &&
             counting->finds > 0,
         "a user-written Store subclass works");
  expect(custom.validate(other.info.public_key, other.secret_key.reveal()).ok() &&
             cache->gets > 0 && cache->puts > 0,
         "a user-written Cache subclass works");

#if defined(APIKEYS_HAS_POSTGRES)
  // Links PostgresStore (and libpq through it); nothing listens on port 1, so opening
  // fails at once with an error a caller can retry.
  bool refused = false;
  try {
    apikeys::PostgresStore pg("host=127.0.0.1 port=1 dbname=apikeys connect_timeout=2");
  } catch (const apikeys::Error& e) {
    refused = e.code() == apikeys::ErrorCode::busy;
  }
  expect(refused, "PostgresStore (built with postgres) reports an unreachable server as busy");
#endif
#if defined(APIKEYS_HAS_REDIS)
  // Links RedisCache (and hiredis through it). It connects lazily; erase() must reach
  // the server, and nothing listens on port 1.
  bool unreachable = false;
  try {
    apikeys::RedisCacheOptions redis_options;
    redis_options.port = 1;
    apikeys::RedisCache redis(redis_options);
    redis.erase(key.info.public_key);
  } catch (const apikeys::Error& e) {
    unreachable = e.code() == apikeys::ErrorCode::busy;
  }
  expect(unreachable, "RedisCache (built with redis) reports an unreachable server as busy");
#endif

  std::cout << (failures == 0 ? "consumer: all checks passed\n" : "consumer: FAILED\n");
  return failures == 0 ? 0 : 1;
}
