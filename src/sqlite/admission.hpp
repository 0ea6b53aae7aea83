// Private to SqliteStore: how the admission columns are kept (schema version 5). A key
// row has lineage_id (NULL for a nil lineage_id: the key's own lineage) and rate_limits
// (text, encode_rate_limits()); a lineage's credits are one row of key_credits.
// See doc/sqlite-store.md, rules 28-31.
// Thread-safety: pure functions over a statement the caller holds alone.
#ifndef APIKEYS_SRC_SQLITE_ADMISSION_HPP
#define APIKEYS_SRC_SQLITE_ADMISSION_HPP

#include <sqlite3.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/types.hpp"

namespace apikeys::detail::sqlite {

// "name=limit/period_ms/burst" per limit, joined by ';' ("" for none). Only integers
// and names of [a-z0-9_.-]: no separator can occur inside a field.
std::string encode_rate_limits(const std::vector<RateLimit>& limits);

// Reads encode_rate_limits()'s text back, checking every rule of RateLimit. Fails
// closed: text that does not parse, or breaks a rule, throws Error(storage) (a corrupt
// record), never yields fewer limits than were written.
std::vector<RateLimit> decode_rate_limits(std::string_view text, const char* op);

// Reads lineage_id (column i: NULL or a UUID) and rate_limits (column i + 1) into `info`.
// `find_read`: a row of find_sql(), whose empty rate_limits reads as the integer 0.
void read_admission(sqlite3_stmt* s, int i, const char* op, KeyInfo& info, bool find_read);

// The credits columns of key_credits from column i on, in the order of kCreditsColumns
// (remaining, refill_amount, refill_interval, refill_mode, refill_cap, refilled_period),
// checked: any value out of its range throws Error(storage).
Credits read_credits(sqlite3_stmt* s, int i, const char* op);

// Binds `c` to kPutCreditsSql's ?2 .. ?7. Returns SQLITE_OK or the first failure's code.
int bind_credits(sqlite3_stmt* s, const Credits& c);

}  // namespace apikeys::detail::sqlite

#endif  // APIKEYS_SRC_SQLITE_ADMISSION_HPP
