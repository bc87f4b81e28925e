#include "qltest.h"
static void test_x(void){}
QLTEST_MAIN(QLT(test_x))
