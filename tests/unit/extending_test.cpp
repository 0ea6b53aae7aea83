// How the Store interface grows without breaking a user's 0.1 backend (doc/extending.md).
// The example's MapStore (examples/custom_store.cpp) implements exactly the operations of
// apikeys 0.1 and none of the later optional ones: it must compile as it is and keep
// working through KeyManager and Validator, with the neutral defaults of identity(),
// revision() and changes_since(). And what a caller sees when a default body cannot do
// the job is Error(not_supported).
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

#define APIKEYS_EXAMPLE_STORE_ONLY
#include "../../examples/custom_store.cpp"

namespace {

using apikeys::ErrorCode;
using apikeys::ValidationCode;

// The code of the apikeys::Error that `f` throws; nullopt when it throws none.
template <typename F>
std::optional<ErrorCode> error_code_of(F&& f) {
  try {
    f();
  } catch (const apikeys::Error& e) {
    return e.code();
  }
  return std::nullopt;
}

// A test-only model of how a later version adds an operation that an older store cannot
// provide: a virtual with a default body, which throws Error(not_supported). It stands
// for the rule, not for an API: apikeys::Store has no such operation.
class GrownStore : public apikeys::Store {
 public:
  virtual std::vector<apikeys::KeyInfo> list_revoked(const apikeys::Uuid& account_id) {
    (void)account_id;
    throw apikeys::Error(ErrorCode::not_supported, "this store cannot list revoked keys");
  }
};

// A store written before list_revoked() existed: the 0.1 operations only.
class OldStore final : public GrownStore {
 public:
  void insert(const apikeys::KeyRecord& record) override { inner_.insert(record); }
  std::optional<apikeys::KeyRecord> find(std::string_view public_key) override {
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
    if (append_only) throw apikeys::Error(ErrorCode::not_supported, "append-only store");
    return inner_.remove(account_id, key_id);
  }
  void record_last_use(const std::vector<apikeys::LastUse>& uses) override {
    inner_.record_last_use(uses);
  }

  bool append_only = false;  // set before sharing the store between threads

 private:
  apikeys::MemoryStore inner_;
};

}  // namespace

TEST_CASE("A store written against 0.1 works through KeyManager and Validator", "[extending]") {
  auto store = std::make_shared<MapStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);

  // The optional operations keep their neutral defaults.
  CHECK(store->identity() == store.get());
  CHECK(store->revision() == 0);
  CHECK_FALSE(store->changes_since(0).has_value());

  apikeys::KeyManagerOptions options;
  options.validation.cache = std::make_shared<apikeys::MemoryCache>();
  apikeys::KeyManager manager(store, hasher, options);
  // A second, separately cached validator over the same store, as another component of
  // the service would hold it.
  apikeys::ValidatorOptions validator_options;
  validator_options.cache = std::make_shared<apikeys::MemoryCache>();
  validator_options.revision_poll_interval = std::chrono::milliseconds(0);
  apikeys::Validator validator(store, hasher, validator_options);

  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::CreateRequest request;
  request.title = "old store";
  const apikeys::CreatedKey key = manager.create(alice, request);
  const std::string pk = key.info.public_key;
  const std::string sk(key.secret_key.reveal());

  const apikeys::ValidationResult ok = validator.validate(pk, sk);
  CHECK(ok.code == ValidationCode::valid);
  CHECK(ok.account_id == alice);
  CHECK(manager.validate(pk, sk).code == ValidationCode::valid);
  CHECK(validator.validate(pk, "sk_" + std::string(32, 'x')).code == ValidationCode::wrong_secret);
  const auto listed = manager.list(alice);
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].key_id == key.info.key_id);

  // The revoke reaches the other validator's cache at once: through identity()'s
  // default, not through revision(), which stays 0 and is not polled here.
  manager.revoke(alice, key.info.key_id);
  CHECK(validator.validate(pk, sk).code == ValidationCode::revoked);
  CHECK(manager.validate(pk, sk).code == ValidationCode::revoked);

  manager.remove(alice, key.info.key_id);
  CHECK(validator.validate(pk, sk).code == ValidationCode::not_found);
  CHECK(manager.list(alice).empty());
  CHECK(error_code_of([&] { manager.revoke(alice, key.info.key_id); }) == ErrorCode::not_found);
}

TEST_CASE("A default body that cannot do the job throws not_supported", "[extending]") {
  auto store = std::make_shared<OldStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::KeyManager manager(store, hasher);

  // The 0.1 operations work on the grown interface...
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::CreateRequest request;
  request.title = "grown";
  const apikeys::CreatedKey key = manager.create(alice, request);
  CHECK(manager.validate(key.info.public_key, key.secret_key.reveal()).ok());

  // ...and the operation it predates says so, with a code a caller can branch on.
  GrownStore& grown = *store;
  CHECK(error_code_of([&] { (void)grown.list_revoked(alice); }) == ErrorCode::not_supported);
  CHECK(std::string(apikeys::to_string(ErrorCode::not_supported)) == "not_supported");

  // A backend that refuses an operation by design: KeyManager passes not_supported on
  // unchanged (not as `storage`), and the key is still there.
  store->append_only = true;
  CHECK(error_code_of([&] { manager.remove(alice, key.info.key_id); }) == ErrorCode::not_supported);
  CHECK(manager.list(alice).size() == 1);
}

TEST_CASE("A whole-record store without take_credits: create refuses credits but not limits",
          "[extending][admission]") {
  auto store = std::make_shared<MapStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::KeyManager manager(store, hasher);
  const apikeys::Uuid alice = apikeys_test::account_id(1);

  // It would keep the key's copy of the balance but never charge it: every validation
  // would be a limiter failure. create refuses it and leaves no key behind.
  apikeys::CreateRequest metered;
  metered.title = "metered";
  apikeys::Credits credits;
  credits.remaining = 5;
  metered.credits = credits;
  CHECK(error_code_of([&] { (void)manager.create(alice, metered); }) == ErrorCode::not_supported);
  CHECK(manager.list(alice).empty());

  // Rate limits need only the key's configuration, which the store keeps.
  apikeys::CreateRequest limited;
  limited.title = "limited";
  limited.rate_limits = {apikeys::parse_rate_limit("per-second=1/1s")};
  const apikeys::CreatedKey key = manager.create(alice, limited);
  CHECK(key.info.rate_limits == limited.rate_limits);
  const std::string sk(key.secret_key.reveal());
  CHECK(manager.validate(key.info.public_key, sk).code == ValidationCode::valid);
  CHECK(manager.validate(key.info.public_key, sk).code == ValidationCode::rate_limited);
}

namespace {

// A store that answers validations only through find_for_validation(): find() fails
// loudly, so a Validator that read through it would answer `error`.
class ValidationReadStore final : public apikeys_test::ForwardingStore {
 public:
  ValidationReadStore() : ForwardingStore(std::make_shared<apikeys::MemoryStore>()) {}
  std::optional<apikeys::KeyRecord> find(std::string_view) override {
    throw apikeys::Error(ErrorCode::storage, "find() is not what Validator reads");
  }
  std::optional<apikeys::KeyRecord> find_for_validation(std::string_view public_key) override {
    ++reads;
    return inner().find_for_validation(public_key);
  }

  int reads = 0;  // one thread only
};

}  // namespace

TEST_CASE("Validator reads a cache miss through find_for_validation()", "[extending]") {
  auto store = std::make_shared<ValidationReadStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::CsprngKeyGenerator generator;
  const apikeys::KeyPair generated = generator.generate(apikeys::KeyFormat{});
  apikeys::KeyRecord record;
  record.info.key_id = apikeys_test::account_id(7);
  record.info.account_id = apikeys_test::account_id(1);
  record.info.public_key = generated.public_key;
  record.info.title = "read for validation";
  record.info.metadata = R"({"tier":3})";
  record.info.scopes = {"invoices.read"};
  record.digest = hasher->hash(generated.secret_key.reveal());
  store->insert(record);

  apikeys::Validator validator(store, hasher);  // no cache: every call reads the store
  const apikeys::ValidationResult ok =
      validator.validate(generated.public_key, generated.secret_key.reveal());
  CHECK(ok.code == ValidationCode::valid);
  CHECK(ok.key_id == record.info.key_id);
  CHECK(ok.metadata == record.info.metadata);
  CHECK(ok.scopes == record.info.scopes);
  CHECK(validator.validate(generated.public_key, "sk_" + std::string(32, 'x')).code ==
        ValidationCode::wrong_secret);
  CHECK(validator
            .validate(generator.generate(apikeys::KeyFormat{}).public_key,
                      generated.secret_key.reveal())
            .code == ValidationCode::not_found);
  CHECK(store->reads == 3);
}
