// Heap accounting for the bench: the subq binary replaces global operator new/delete
// with counting versions, so a case's peak extra memory is measured, not declared.
#pragma once

#include <cstddef>

namespace subq::bench {

size_t heap_in_use();
size_t heap_peak();
// Restarts peak tracking from the bytes in use now.
void heap_reset_peak();

}  // namespace subq::bench
