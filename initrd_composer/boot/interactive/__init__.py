"""`interactive`: the restore with a console UI over the plan (menu_model: pure; the curses
screen and the stage around it)."""
