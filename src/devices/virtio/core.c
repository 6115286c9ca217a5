/* placeholder: being written */
#include <errno.h>
#include "godwit/virtio.h"
