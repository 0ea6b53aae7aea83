// apikeys::MemoryStore keeps records in process memory: for tests, examples and
// small embedded uses. Nothing survives the process.
// Thread-safety: every method is safe from many threads (a reader-writer lock).
// Ownership: owns copies of every record.
#ifndef APIKEYS_MEMORY_STORE_HPP
#define APIKEYS_MEMORY_STORE_HPP

#include <cstddef>
#include <memory>

#include "apikeys/export.hpp"
#include "apikeys/store.hpp"

namespace apikeys {

/// A Store in process memory, bounded in keys. revision() stays 0: nothing outside
/// this process can change it.
class APIKEYS_EXPORT MemoryStore final : public Store {
 public:
  /// `max_keys` bounds memory: insert() throws Error(storage) beyond it.
  /// Default: 10,000,000 keys.
  explicit MemoryStore(std::size_t max_keys = 10'000'000);
  ~MemoryStore() override;

  void insert(const KeyRecord& record) override;
  [[nodiscard]] std::optional<KeyRecord> find(std::string_view public_key) override;
  [[nodiscard]] std::vector<KeyInfo> list(const Uuid& account_id) override;
  std::optional<KeyInfo> set_status(const Uuid& account_id, const Uuid& key_id,
                                    KeyStatus status) override;
  std::optional<KeyInfo> remove(const Uuid& account_id, const Uuid& key_id) override;
  void record_last_use(const std::vector<LastUse>& uses) override;

  /// Number of keys held.
  [[nodiscard]] std::size_t size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace apikeys

#endif  // APIKEYS_MEMORY_STORE_HPP
