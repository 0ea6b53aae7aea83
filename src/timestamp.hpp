// Private: parsing the timestamps of an import (PostgreSQL timestamptz as its CSV export
// and a REST JSON export write them) into UTC TimePoints.
// Thread-safety: a pure function. Ownership: nothing is kept.
#ifndef APIKEYS_SRC_TIMESTAMP_HPP
#define APIKEYS_SRC_TIMESTAMP_HPP

#include <optional>
#include <string_view>

#include "apikeys/types.hpp"

namespace apikeys::detail {

// Parses `s`, "YYYY-MM-DD[T ]HH:MM:SS[.f]" followed by a UTC offset: "Z", "+HH", "+HH:MM" or
// "+HHMM" (or '-'), the fraction 1 to 9 digits. Returns the instant in UTC, truncated to
// whole microseconds (what PostgreSQL keeps), or nullopt for anything else: no offset,
// a date or time that does not exist (February 30, hour 24, second 60), an offset hour
// above 23 or minute above 59, or an instant TimePoint cannot hold.
[[nodiscard]] std::optional<TimePoint> parse_timestamp(std::string_view s) noexcept;

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_TIMESTAMP_HPP
