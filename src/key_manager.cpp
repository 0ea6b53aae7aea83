#include "apikeys/key_manager.hpp"

#include <openssl/crypto.h>

#include <limits>

#include "apikeys/error.hpp"
#include "cache_registry.hpp"
#include "text.hpp"

namespace apikeys {

namespace {

// Error messages name the rule that was broken, never the submitted value: a caller
// who pastes a secret into a title must not find it echoed into logs.
[[noreturn]] void refuse(const char* rule) { throw Error(ErrorCode::invalid_argument, rule); }

// The rules of one text field, with the message for each.
struct TextRules {
  std::size_t max_code_points;
  std::string_view allowed_controls;
  const char* not_utf8;
  const char* too_long;
  const char* control;
  const char* bidi_or_zero_width;
};

// Bidirectional formatting and zero-width characters are invisible but reorder or join
// what surrounds them, so a dashboard could show one key's title as another's.
constexpr TextRules kTitleRules{
    KeyManager::kMaxTitleCodePoints,
    {},
    "title must be valid UTF-8",
    "title must be at most 255 characters",
    "title must not contain control characters",
    "title must not contain bidirectional formatting or zero-width characters"};
constexpr TextRules kDescriptionRules{
    KeyManager::kMaxDescriptionCodePoints,
    "\t\n\r",
    "description must be valid UTF-8",
    "description must be at most 1024 characters",
    "description must not contain control characters other than tab and newline",
    "description must not contain bidirectional formatting or zero-width characters"};

void check_text(std::string_view text, const TextRules& rules) {
  // Four bytes per code point at most: anything larger is too long without decoding it.
  if (text.size() > rules.max_code_points * 4) refuse(rules.too_long);
  const auto n = detail::utf8_length(text, std::numeric_limits<std::size_t>::max());
  if (!n) refuse(rules.not_utf8);
  if (*n > rules.max_code_points) refuse(rules.too_long);
  if (detail::has_control(text, rules.allowed_controls)) refuse(rules.control);
  if (detail::has_bidi_or_zero_width(text)) refuse(rules.bidi_or_zero_width);
}

// One error model: a user's Store may throw anything; callers only ever see Error.
template <class F>
auto guarded(const char* operation, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::storage, std::string(operation) + " failed: " + e.what());
  } catch (...) {
    throw Error(ErrorCode::storage, std::string(operation) + " failed");
  }
}

}  // namespace

CreateRequest normalize_request(const CreateRequest& request) {
  CreateRequest out;
  const std::string_view title = detail::trim_ascii(request.title);
  if (title.empty()) refuse("title must not be empty or blank");
  check_text(title, kTitleRules);
  check_text(request.description, kDescriptionRules);
  if (request.expires_in_days &&
      (*request.expires_in_days < 1 || *request.expires_in_days > KeyManager::kMaxExpiryDays)) {
    refuse("expires_in_days must be between 1 and 365");
  }
  out.title.assign(title);
  out.description = request.description;
  out.expires_in_days = request.expires_in_days;
  return out;
}

struct KeyManager::Impl {
  std::shared_ptr<Store> store;
  std::shared_ptr<Hasher> hasher;
  std::shared_ptr<KeyGenerator> generator;
  std::shared_ptr<Clock> clock;
  KeyFormat format;
  Validator validator;

  // By value: its members are moved from below (cppcheck does not see member moves).
  // cppcheck-suppress passedByValue
  Impl(std::shared_ptr<Store> s, std::shared_ptr<Hasher> h, KeyManagerOptions o)
      : store(s),
        hasher(h),
        generator(o.generator ? std::move(o.generator) : std::make_shared<CsprngKeyGenerator>()),
        clock(o.validation.clock ? o.validation.clock : system_clock()),
        format(o.validation.format),
        validator(std::move(s), std::move(h), std::move(o.validation)) {}
};

KeyManager::KeyManager(std::shared_ptr<Store> store, std::shared_ptr<Hasher> hasher,
                       KeyManagerOptions options) {
  if (!store) throw Error(ErrorCode::invalid_argument, "a KeyManager needs a Store");
  if (!hasher) throw Error(ErrorCode::invalid_argument, "a KeyManager needs a Hasher");
  impl_ = std::make_unique<Impl>(std::move(store), std::move(hasher), std::move(options));
}

KeyManager::~KeyManager() = default;

CreatedKey KeyManager::create(const Uuid& account_id, const CreateRequest& request) {
  if (account_id.is_nil()) refuse("account id must not be the nil UUID");
  CreateRequest req = normalize_request(request);

  KeyPair pair = impl_->generator->generate(impl_->format);
  if (!impl_->format.is_public_key(pair.public_key) ||
      !impl_->format.is_secret_key(pair.secret_key.reveal())) {
    throw Error(ErrorCode::crypto, "the key generator produced keys of the wrong format");
  }

  KeyRecord record;
  KeyInfo& info = record.info;
  info.key_id = Uuid::random();
  info.account_id = account_id;
  info.public_key = pair.public_key;
  info.title = std::move(req.title);
  info.description = std::move(req.description);
  info.status = KeyStatus::active;
  // Stores keep milliseconds; truncate now so what we return equals what is stored.
  info.created_at = from_unix_millis(to_unix_millis(impl_->clock->now()));
  if (req.expires_in_days)
    info.expires_at = info.created_at + std::chrono::hours(24 * *req.expires_in_days);
  record.digest = impl_->hasher->hash(pair.secret_key.reveal());

  guarded("storing the key", [&] { impl_->store->insert(record); });
  // A verdict cached for this public key before it existed (only possible with a
  // predictable generator) must not outlive its creation. Best effort: the key is
  // committed, and throwing now would lose its only copy of the secret; a stale entry
  // could only be a negative verdict (fail closed), gone within its TTL.
  try {
    detail::erase_everywhere(impl_->store->identity(), info.public_key);
  } catch (...) {
  }

  return CreatedKey{std::move(record.info), std::move(pair.secret_key)};
}

std::vector<KeyInfo> KeyManager::list(const Uuid& account_id) {
  return guarded("listing keys", [&] { return impl_->store->list(account_id); });
}

KeyInfo KeyManager::revoke(const Uuid& account_id, const Uuid& key_id) {
  auto info = guarded("revoking the key", [&] {
    return impl_->store->set_status(account_id, key_id, KeyStatus::revoked);
  });
  if (!info)
    throw Error(ErrorCode::not_found, "no key " + key_id.to_string() + " for this account");
  // Every Validator over this store's data in the process, not only our own.
  detail::erase_everywhere(impl_->store->identity(), info->public_key);
  return std::move(*info);
}

KeyInfo KeyManager::remove(const Uuid& account_id, const Uuid& key_id) {
  auto info = guarded("deleting the key", [&] { return impl_->store->remove(account_id, key_id); });
  if (!info)
    throw Error(ErrorCode::not_found, "no key " + key_id.to_string() + " for this account");
  // Every Validator over this store's data in the process, not only our own.
  detail::erase_everywhere(impl_->store->identity(), info->public_key);
  return std::move(*info);
}

ValidationResult KeyManager::validate(std::string_view public_key,
                                      std::string_view secret_key) const noexcept {
  return impl_->validator.validate(public_key, secret_key);
}

ValidationResult KeyManager::validate(std::string_view token) const noexcept {
  return impl_->validator.validate(token);
}

Validator& KeyManager::validator() noexcept { return impl_->validator; }

}  // namespace apikeys
