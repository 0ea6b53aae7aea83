// Keys that survive a restart: SqliteStore keeps them in one SQLite file. This program
// creates a key, closes everything (as a service restart would), reopens the file and
// validates the key, revokes it, then reopens once more and finds it still revoked.
//   example_sqlite [database file]      (default: apikeys-example.db)
// Returns 0 when the library behaves as documented, 1 otherwise.
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include "apikeys/apikeys.hpp"

namespace {

// Digests made with one pepper never verify with another, so a service must load the
// same pepper every time it opens the database: from a secret manager, or here from
// APIKEYS_PEPPER. Without it this run makes a fresh one, which is fine because it only
// validates keys it created itself (keys of earlier runs stay in the file, unusable).
std::string load_pepper() {
  if (const char* configured = std::getenv("APIKEYS_PEPPER")) return configured;
  std::string pepper;
  apikeys::append_random_base62(pepper, 43);  // 256 bits
  return pepper;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "apikeys-example.db";
  try {
    auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(load_pepper());
    const apikeys::Uuid account = apikeys::Uuid::random();
    apikeys::Uuid key_id;
    std::string public_key;
    apikeys::SecretString secret;

    {  // First "process": create a key.
      apikeys::KeyManager manager(std::make_shared<apikeys::SqliteStore>(path), hasher);
      apikeys::CreateRequest request;
      request.title = "nightly export";
      request.expires_in_days = 30;
      apikeys::CreatedKey key = manager.create(account, request);
      key_id = key.info.key_id;
      public_key = key.info.public_key;
      secret = std::move(key.secret_key);  // hand it to the user once; only its HMAC is stored
      std::cout << "created " << public_key << " in " << path << '\n';
    }  // the manager and the store close here: the key is on disk

    {  // After a restart: the key is still there and still valid.
      apikeys::KeyManager manager(std::make_shared<apikeys::SqliteStore>(path), hasher);
      const apikeys::ValidationResult result = manager.validate(public_key, secret.reveal());
      std::cout << "after reopening: " << apikeys::to_string(result.code) << '\n';
      if (!result.ok() || result.account_id != account || result.key_id != key_id) return 1;
      manager.revoke(account, key_id);
    }

    {  // And a revoke is as durable as the key.
      apikeys::KeyManager manager(std::make_shared<apikeys::SqliteStore>(path), hasher);
      const apikeys::ValidationResult result = manager.validate(public_key, secret.reveal());
      std::cout << "after revoking and reopening: " << apikeys::to_string(result.code) << '\n';
      const auto keys = manager.list(account);
      if (keys.size() != 1 || keys.front().status != apikeys::KeyStatus::revoked) return 1;
      return result.code == apikeys::ValidationCode::revoked ? 0 : 1;
    }
  } catch (const apikeys::Error& e) {
    // Branch on the code; the message is safe to log (it never holds a secret).
    std::cerr << "apikeys error (" << apikeys::to_string(e.code()) << "): " << e.what() << '\n';
    return 1;
  }
}
