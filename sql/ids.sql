-- ids: the id conventions of every prepared table, defined once (purchasepred/features.py holds the
-- same numbers for Python). Run on every DuckDB connection that writes or reads prepared tables
-- (resources.define_ids), so no SQL file spells a bare 0, 1, 2 or 3.

-- ids shared by every table: 0 pads a sequence, 1 is an unknown or rare value, real ids start at 2
create or replace macro pad_id() as 0;
create or replace macro unknown_id() as 1;
create or replace macro first_id() as 2;

-- event types: ids 1..4 (0 is padding); the names are the canonical event names of the input mapping
create or replace macro view_id() as 1;
create or replace macro cart_id() as 2;
create or replace macro purchase_id() as 3;
create or replace macro remove_from_cart_id() as 4;
create or replace macro event_type_id(name) as case name
    when 'view' then view_id() when 'cart' then cart_id() when 'purchase' then purchase_id()
    when 'remove_from_cart' then remove_from_cart_id() end;
create or replace macro event_type_name(id) as case id
    when view_id() then 'view' when cart_id() then 'cart' when purchase_id() then 'purchase'
    when remove_from_cart_id() then 'remove_from_cart' end;
