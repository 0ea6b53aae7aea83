# apikeys_set_warnings(target): the project's warning flags, as errors when
# APIKEYS_WERROR is on. Applied per target, never globally.
function(apikeys_set_warnings target)
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4 $<$<BOOL:${APIKEYS_WERROR}>:/WX>)
  else()
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow
      -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual
      -Wnull-dereference -Wformat=2 -Wimplicit-fallthrough
      $<$<BOOL:${APIKEYS_WERROR}>:-Werror>)
  endif()
endfunction()
