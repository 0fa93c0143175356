from sttgate.cli import main

raise SystemExit(main())
