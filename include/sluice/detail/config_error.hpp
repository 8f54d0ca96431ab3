// Sluice internals — the one wording of a configuration error, for every component:
//   <kind> '<name>': invalid <setting> = <value> (accepted: <range>)
#pragma once

#include <string>
#include <string_view>

namespace sluice::detail {

/// Throws std::invalid_argument with the message above.
[[noreturn]] void throw_bad_setting(std::string_view kind, std::string_view name,
                                    std::string_view setting, std::string_view value,
                                    std::string_view range);

}  // namespace sluice::detail
