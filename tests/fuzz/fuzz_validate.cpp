// fuzz_validate: Validator::validate on arbitrary bytes against a populated MemoryStore,
// through a MemoryCache and without one. Every answer is compared with a reference
// verdict computed from the table of keys this program created; above all, `valid`
// only ever comes back for a known (public key, secret) pair of an active, unexpired key.
// Input: the whole input as a "pk:sk" token, and also split at its first NUL byte into
// (public key, secret). Keys are made by a fixed generator so seeds can name them.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "fuzz_support.hpp"

namespace {

using apikeys::ValidationCode;

std::string padded(std::string_view prefix, std::string_view name, char fill) {
  std::string s(prefix);
  s += name;
  s.resize(prefix.size() + 32, fill);
  return s;
}

// Hands out the pairs queued in `next`, so the keys are known to the seeds.
class FixedGenerator final : public apikeys::KeyGenerator {
 public:
  apikeys::KeyPair generate(const apikeys::KeyFormat&) override {
    if (next.empty()) throw std::logic_error("FixedGenerator: no pair queued");
    apikeys::KeyPair pair;
    pair.public_key = next.front().first;
    pair.secret_key = apikeys::SecretString(next.front().second);
    next.erase(next.begin());
    return pair;
  }
  std::vector<std::pair<std::string, std::string>> next;
};

struct Known {
  std::string secret;
  apikeys::Uuid account_id;
  apikeys::Uuid key_id;
  bool revoked = false;
  bool expired = false;
};

struct World {
  std::shared_ptr<apikeys::ManualClock> clock;
  std::shared_ptr<apikeys::MemoryStore> store;
  std::unique_ptr<apikeys::KeyManager> manager;    // validates through a MemoryCache
  std::unique_ptr<apikeys::Validator> uncached;    // reads the store every time
  std::map<std::string, Known, std::less<>> keys;  // by public key

  World() {
    using namespace std::chrono;
    const apikeys::TimePoint t0 = apikeys::from_unix_millis(1'767'225'600'000);  // 2026-01-01
    clock = std::make_shared<apikeys::ManualClock>(t0);
    store = std::make_shared<apikeys::MemoryStore>();
    auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(fuzz::kPepper);
    auto generator = std::make_shared<FixedGenerator>();

    apikeys::MemoryCacheOptions cache_options;
    cache_options.capacity = 256;  // small, so eviction runs too
    cache_options.shards = 4;
    cache_options.clock = clock;
    apikeys::KeyManagerOptions options;
    options.generator = generator;
    options.validation.clock = clock;
    options.validation.cache = std::make_shared<apikeys::MemoryCache>(cache_options);
    manager = std::make_unique<apikeys::KeyManager>(store, hasher, options);

    apikeys::ValidatorOptions plain;
    plain.clock = clock;
    plain.record_last_use = false;
    uncached = std::make_unique<apikeys::Validator>(store, hasher, plain);

    const apikeys::Uuid account_a = *apikeys::Uuid::parse("0a0a0a0a-0000-4000-8000-00000000000a");
    const apikeys::Uuid account_b = *apikeys::Uuid::parse("0b0b0b0b-0000-4000-8000-00000000000b");
    struct Spec {
      const char* name;
      const apikeys::Uuid* account;
      int expires_in_days;  // 0: never
      bool revoke;
    };
    const Spec specs[] = {
        {"Alpha", &account_a, 0, false},    {"Bravo", &account_a, 0, false},
        {"Charlie", &account_b, 30, false}, {"Delta", &account_b, 0, true},
        {"Echo", &account_a, 1, false},     {"Foxtrot", &account_b, 1, true},
    };
    for (const Spec& s : specs) {
      const std::string pk = padded("pk_", s.name, '0');
      const std::string sk = padded("sk_", s.name, '1');
      generator->next.emplace_back(pk, sk);
      apikeys::CreateRequest request;
      request.title = s.name;
      if (s.expires_in_days > 0) request.expires_in_days = s.expires_in_days;
      const apikeys::CreatedKey created = manager->create(*s.account, request);
      Known k;
      k.secret = sk;
      k.account_id = *s.account;
      k.key_id = created.info.key_id;
      k.revoked = s.revoke;
      k.expired = s.expires_in_days == 1;  // the clock moves past it below
      if (s.revoke) (void)manager->revoke(*s.account, created.info.key_id);
      keys.emplace(pk, std::move(k));
    }
    clock->advance(hours(24 * 2));  // Echo and Foxtrot have expired; Charlie has 28 days left
  }

  // What validate(pk, sk) must answer, from the contract's order of checks.
  ValidationCode expected(std::string_view pk, std::string_view sk, const Known** hit) const {
    static const apikeys::KeyFormat format;
    *hit = nullptr;
    if (!format.is_public_key(pk) || !format.is_secret_key(sk)) return ValidationCode::malformed;
    const auto it = keys.find(pk);
    if (it == keys.end()) return ValidationCode::not_found;
    // Secret first: a wrong secret learns nothing of the key's state.
    if (it->second.secret != sk) return ValidationCode::wrong_secret;
    if (it->second.expired) return ValidationCode::expired;
    if (it->second.revoked) return ValidationCode::revoked;
    *hit = &it->second;
    return ValidationCode::valid;
  }
};

World& world() {
  static World w;
  return w;
}

void check(const apikeys::ValidationResult& r, ValidationCode want, const Known* hit) {
  if (r.code != want) {
    std::fprintf(stderr, "got %s, expected %s\n", apikeys::to_string(r.code),
                 apikeys::to_string(want));
  }
  FUZZ_CHECK(r.code == want);
  if (r.ok()) {
    FUZZ_CHECK(hit != nullptr);
    FUZZ_CHECK(r.account_id == hit->account_id);
    FUZZ_CHECK(r.key_id == hit->key_id);
  } else {
    FUZZ_CHECK(r.account_id.is_nil() && r.key_id.is_nil());
  }
}

void check_pair(World& w, std::string_view pk, std::string_view sk) {
  const Known* hit = nullptr;
  const ValidationCode want = w.expected(pk, sk, &hit);
  check(w.uncached->validate(pk, sk), want, hit);
  check(w.manager->validate(pk, sk), want, hit);  // a miss, then usually a hit
  check(w.manager->validate(pk, sk), want, hit);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  const std::string_view whole(reinterpret_cast<const char*>(data), size);

  // As a token: the split is at the first colon; no colon is malformed.
  const auto colon = whole.find(':');
  if (colon == std::string_view::npos) {
    FUZZ_CHECK(w.manager->validate(whole).code == ValidationCode::malformed);
    FUZZ_CHECK(w.uncached->validate(whole).code == ValidationCode::malformed);
  } else {
    const Known* hit = nullptr;
    const ValidationCode want = w.expected(whole.substr(0, colon), whole.substr(colon + 1), &hit);
    check(w.manager->validate(whole), want, hit);
    check(w.uncached->validate(whole), want, hit);
  }

  // As two arguments.
  fuzz::Reader in(data, size);
  const std::string_view pk = in.field();
  check_pair(w, pk, in.rest());
  return 0;
}
