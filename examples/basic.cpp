// The smallest complete use of apikeys: issue a key, validate it, revoke it, and see it
// rejected. Everything lives in memory (MemoryStore); swap in SqliteStore("keys.db")
// to keep keys. Returns 0 when the library behaves as documented, 1 otherwise.
#include <iostream>
#include <memory>
#include <string>

#include "apikeys/apikeys.hpp"

int main() {
  // The pepper is the HMAC key: at least 32 random bytes, loaded from a secret store in
  // a real service and never kept next to the database. Random here, as nothing outlives
  // this process.
  std::string pepper;
  apikeys::append_random_base62(pepper, 43);  // 43 base62 characters: 256 bits
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(pepper);
  auto store = std::make_shared<apikeys::MemoryStore>();
  apikeys::KeyManager manager(store, hasher);

  const apikeys::Uuid account = apikeys::Uuid::random();
  apikeys::CreateRequest request;
  request.title = "billing service";
  request.expires_in_days = 90;
  const apikeys::CreatedKey key = manager.create(account, request);
  // Show key.secret_key.reveal() to the user once; only its HMAC is stored.
  std::cout << "created " << key.info.public_key << " (key " << key.info.key_id.to_string()
            << ")\n";

  // On each request: validate the presented pair (or the "pk_...:sk_..." token).
  const apikeys::ValidationResult ok =
      manager.validate(key.info.public_key, key.secret_key.reveal());
  std::cout << "validate: " << apikeys::to_string(ok.code) << '\n';
  if (!ok.ok() || ok.account_id != account || ok.key_id != key.info.key_id) return 1;

  // Revoke: when revoke() returns, no validation in this process accepts the key.
  manager.revoke(account, key.info.key_id);
  const apikeys::ValidationResult after =
      manager.validate(key.info.public_key, key.secret_key.reveal());
  std::cout << "after revoke: " << apikeys::to_string(after.code) << '\n';
  return after.code == apikeys::ValidationCode::revoked ? 0 : 1;
}
