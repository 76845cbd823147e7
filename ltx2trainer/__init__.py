from ltx2trainer import import_noise

import_noise.install()
